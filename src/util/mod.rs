//! Helpers every layer may use and that know nothing of diffusion: atomic file writes
//! ([`fsio`]), progress bars ([`progress`]), PNG images ([`image`]), plots ([`plot`]) and the
//! memory and disk a size may claim ([`memory`]), stop signals ([`signal`]), the safetensors codec
//! and SHA-256 ([`safetensors`]), and the ZIP and numpy `.npz` formats ([`zip`], [`npz`]).
pub mod fsio;
pub mod image;
pub mod memory;
pub mod names;
pub mod npz;
pub mod plot;
pub mod progress;
pub mod safetensors;
pub mod signal;
pub mod zip;

//! Helpers every layer may use and that know nothing of diffusion: atomic file writes
//! ([`fsio`]), progress bars ([`progress`]), PNG images ([`image`]), plots ([`plot`]) and the
//! memory and disk a size may claim ([`memory`]).
pub mod fsio;
pub mod image;
pub mod memory;
pub mod plot;
pub mod progress;

//! Helpers every layer may use and that know nothing of diffusion: atomic file writes
//! ([`fsio`]), progress bars ([`progress`]), PNG images ([`image`]) and plots ([`plot`]).
pub mod fsio;
pub mod image;
pub mod plot;
pub mod progress;

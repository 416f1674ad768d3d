//! diffusers' `UNet2DModel`, reproduced exactly: built from its `config.json`, its variables
//! named as diffusers' state dict (`conv_in.weight`, `down_blocks.0.resnets.1.norm1.weight`,
//! `mid_block.attentions.0.to_q.weight`, …), so `diffusion_pytorch_model.safetensors` loads
//! without renaming (the legacy attention names `query`/`key`/`value`/`proj_attn` are mapped by
//! [`legacy_name`]).
//!
//! Supported: `DownBlock2D`, `AttnDownBlock2D`, `UpBlock2D`, `AttnUpBlock2D`, `UNetMidBlock2D`
//! (with or without attention, or none), `layers_per_block`, `block_out_channels`,
//! `norm_num_groups`, `norm_eps`, `resnet_time_scale_shift` `default` / `scale_shift`,
//! `downsample_padding` 0 (pad right and bottom by one first) or 1, `flip_sin_to_cos`,
//! `freq_shift`, positional time embeddings, `attention_head_dim` (null: one head),
//! `num_class_embeds`, `center_input_sample`, `mid_block_scale_factor`, dropout. Anything else
//! is refused by [`DiffusersUNetConfig::from_json`] naming the key and value.
//!
//! As a [`Backbone`] the time input is diffusers' (fractional) timestep, and the DSNO hook
//! slots are after every resnet (with its attention) of the down and up blocks and after the
//! mid block: the non-resampling blocks.
pub mod blocks;
pub mod config;
pub mod model;

pub use config::DiffusersUNetConfig;
pub use model::DiffusersUNet;

/// The variable path of the class embedding (diffusers' `class_embedding.weight`).
pub const CLASS_EMBEDDING: &str = "class_embedding";

/// The diffusers name of a legacy attention variable (`query` → `to_q`, `key` → `to_k`,
/// `value` → `to_v`, `proj_attn` → `to_out.0`); `None` for other names.
pub fn legacy_name(name: &str) -> Option<String> {
    for (old, new) in [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ] {
        if name.contains(".attentions.") && name.contains(old) {
            return Some(name.replacen(old, new, 1));
        }
    }
    None
}

//! Fuzz target: diffusers folders (config.json, scheduler_config.json).
use super::*;

const DIFFUSERS_KEYS: &[&str] = &[
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "layers_per_block",
    "norm_num_groups",
    "norm_eps",
    "attention_head_dim",
    "freq_shift",
    "flip_sin_to_cos",
    "downsample_padding",
    "sample_size",
    "in_channels",
    "out_channels",
    "resnet_time_scale_shift",
    "num_class_embeds",
    "time_embedding_dim",
    "mid_block_scale_factor",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "num_train_timesteps",
    "prediction_type",
];

pub(crate) fn diffusers_target(work: &Path) -> Target {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers");
    let read = |m: &str, f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(fixtures.join(m).join(f)).unwrap()).unwrap()
    };
    let bases: Vec<(usize, Value, Value)> = ["ddpm", "legacy"]
        .iter()
        .enumerate()
        .map(|(i, m)| (i, read(m, "config.json"), read(m, "scheduler_config.json")))
        .collect();
    let models = ["ddpm", "legacy"];
    // input: [model index, which file (0 config, 1 scheduler)] + the edited JSON text
    let strategy = (
        select(bases),
        any::<bool>(),
        vec((sel(DIFFUSERS_KEYS), json_edit()), 1..4),
    )
        .prop_map(|((i, cfg, sch), scheduler, edits)| {
            let mut v = if scheduler { sch } else { cfg };
            for (at, e) in &edits {
                edit_json(&mut v, at, e);
            }
            let mut out = vec![i as u8, scheduler as u8];
            out.extend(json_text(&v).into_bytes());
            out
        })
        .boxed();
    let dir = work.join("diffusers");
    let check = move |input: &[u8]| -> Result<(), String> {
        let [i, which, text @ ..] = input else {
            return Ok(());
        };
        let model = models[*i as usize % models.len()];
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "config.json",
            "diffusion_pytorch_model.safetensors",
            "scheduler_config.json",
        ] {
            std::fs::copy(fixtures.join(model).join(f), dir.join(f)).unwrap();
        }
        let file = if *which % 2 == 1 {
            "scheduler_config.json"
        } else {
            "config.json"
        };
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let o = dsno::import::ImportOptions::default();
        match guarded("import_diffusers", || {
            dsno::import::import_diffusers(&dir, &o)
        })? {
            Err(e) => {
                let s = e.to_string();
                let weights = dir.join("diffusion_pytorch_model.safetensors");
                // a changed architecture is caught when the weights do not fit it
                if s.contains(&weights.display().to_string()) {
                    return Ok(());
                }
                named(&e, &path, "diffusers")
            }
            Ok(ck) => {
                let net = guarded("build", || {
                    ck.meta.model.build(&nn::VarStore::new(Device::Cpu).root())
                })?
                .map_err(|e| format!("garbage: imported but not buildable: {e}"))?;
                let shape: Vec<i64> = [1]
                    .into_iter()
                    .chain(ck.meta.model.sample_shape())
                    .collect();
                if shape.iter().product::<i64>() > MAX_SAMPLE {
                    return Ok(());
                }
                let x = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
                let t = Tensor::from_slice(&[ck.meta.schedule.t_input(0.5) as f32]);
                let y = guarded("forward", || net.forward(&x, &t, None, false))?
                    .map_err(|e| format!("an accepted import does not run: {e}"))?;
                if !all_finite(&y) {
                    return Err("garbage: an accepted import gives non-finite outputs".into());
                }
                Ok(())
            }
        }
    };
    Target {
        strategy,
        check: Box::new(check),
    }
}

//! Fuzz target: checkpoints.
use super::*;

/// The checkpoints mutated: small ones made here first (cheap to run), then the bundled MNIST
/// teacher and KD student.
fn checkpoint_bases(work: &Path) -> Vec<Vec<u8>> {
    let p = |n: &str| work.join(n);
    let mut teacher_mlp = meta(
        ModelKind::Teacher,
        ModelConfig::Mlp(tiny_mlp()),
        Schedule::vp_cosine(),
    );
    teacher_mlp.train = Some(json!({"train": {"steps": 3, "lr": 1e-3}}));
    let mut dsno_mlp = meta(
        ModelKind::Student(Method::DSNO),
        ModelConfig::Mlp(tiny_mlp()),
        Schedule::vp_linear(),
    );
    dsno_mlp.times = Some(OutputTimes::new(vec![0.75, 0.25, 0.0]).unwrap());
    dsno_mlp.modes = Some(2);
    let mut kd_unet = meta(
        ModelKind::Student(Method::KD),
        ModelConfig::Unet(tiny_unet()),
        Schedule::vp_cosine(),
    );
    kd_unet.times = Some(OutputTimes::new(vec![0.5, 0.0]).unwrap());
    let teacher_unet = meta(
        ModelKind::Teacher,
        ModelConfig::Unet(tiny_unet()),
        Schedule::edm(),
    );
    let mut dsno_unet = meta(
        ModelKind::Student(Method::DSNO),
        ModelConfig::Unet(tiny_unet()),
        Schedule::vp_cosine(),
    );
    dsno_unet.times = Some(OutputTimes::new(vec![0.5, 0.1, 0.0]).unwrap());
    dsno_unet.modes = Some(1);
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    vec![
        make_checkpoint(&p("teacher-mlp.safetensors"), teacher_mlp, None),
        make_checkpoint(&p("dsno-mlp.safetensors"), dsno_mlp, None),
        make_checkpoint(&p("kd-unet.safetensors"), kd_unet, Some(Kind::Half)),
        make_checkpoint(&p("teacher-unet.safetensors"), teacher_unet, None),
        make_checkpoint(&p("dsno-unet.safetensors"), dsno_unet, Some(Kind::BFloat16)),
        std::fs::read(models.join("mnist-teacher.safetensors")).unwrap(),
        std::fs::read(models.join("mnist-kd.safetensors")).unwrap(),
    ]
}

/// Inputs: the checkpoint's bytes.
pub(crate) fn checkpoint_target(work: &Path) -> Target {
    let bases = std::sync::Arc::new(checkpoint_bases(work));
    let nb = bases.len();
    let b2 = bases.clone();
    let strategy = (
        prop_oneof![3 => 0..nb - 2, 1 => nb - 2..nb],
        vec(st_mut(true), 1..4),
    )
        .prop_map(move |(i, ms)| {
            let mut b = b2[i].clone();
            for m in &ms {
                apply_st(&mut b, m);
            }
            b
        })
        .boxed();
    let path = work.join("case.safetensors");
    let check = move |input: &[u8]| -> Result<(), String> {
        std::fs::write(&path, input).unwrap();
        let loaded = guarded("checkpoint::load_bytes", || {
            checkpoint::load_bytes(input, &path)
        })?;
        let meta = guarded("checkpoint::read_meta", || checkpoint::read_meta(&path))?;
        if let Err(e) = &meta {
            named(e, &path, "checkpoint::read_meta")?;
        }
        let ck = match loaded {
            Err(e) => return named(&e, &path, "checkpoint::load_bytes"),
            Ok(ck) => ck,
        };
        match &meta {
            Ok(m) if *m != ck.meta => {
                return Err("garbage: read_meta and load_bytes disagree on the metadata".into())
            }
            Err(e) => {
                return Err(format!(
                    "garbage: read_meta rejects a checkpoint that load_bytes accepts\n{e}"
                ))
            }
            _ => {}
        }
        run_model(ck, &path)
    };
    Target {
        strategy,
        check: Box::new(check),
    }
}

/// Builds the model of an accepted checkpoint as the CLI does and runs it once.
fn run_model(ck: checkpoint::Checkpoint, path: &Path) -> Result<(), String> {
    let meta = ck.meta.clone();
    let params = guarded("ModelConfig::num_params", || meta.model.num_params())?;
    if params > MAX_PARAMS {
        note("checkpoint: model not built (num_params > 5e6)");
        return Ok(());
    }
    if let Some((name, _)) = ck.tensors.iter().find(|(_, t)| !all_finite(t)) {
        return Err(format!(
            "garbage: checkpoint with non-finite weights accepted\n(tensor `{name}`)"
        ));
    }
    let max_weight = ck
        .tensors
        .values()
        .filter(|t| t.is_floating_point() && t.numel() > 0)
        .map(|t| t.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    let shape = meta.model.sample_shape();
    let desc = format!("{:?} {:?}", meta.kind, meta.model);
    let mut dims = vec![1i64];
    dims.extend(&shape);
    let too_big = shape.iter().any(|&d| d > MAX_SAMPLE)
        || shape.iter().map(|&d| d.max(1)).product::<i64>() > MAX_SAMPLE;
    tch::manual_seed(0);
    let out = if meta.kind == ModelKind::Teacher {
        let t = match guarded("Teacher::load", || Teacher::load(path, Device::Cpu))? {
            Err(e) => return named(&e, path, "Teacher::load"),
            Ok(t) => t,
        };
        bad_shape(&shape, &desc)?;
        if too_big {
            note("checkpoint: forward skipped (sample too large)");
            return Ok(());
        }
        let z = Tensor::randn(dims.as_slice(), (Kind::Float, Device::Cpu));
        match guarded("Teacher::denoise", || t.denoise(&z, 0.5, None))? {
            Err(e) if e.to_string().trim().is_empty() => {
                return Err("bad error: Teacher::denoise returned an empty message".into())
            }
            Err(_) => return Ok(()),
            Ok(x) => x,
        }
    } else {
        let g = match guarded("OneStep::from_checkpoint", || {
            OneStep::from_checkpoint(ck, path, Device::Cpu)
        })? {
            Err(e) => return named(&e, path, "OneStep::from_checkpoint"),
            Ok(g) => g,
        };
        bad_shape(&shape, &desc)?;
        if too_big {
            note("checkpoint: forward skipped (sample too large)");
            return Ok(());
        }
        let x = Tensor::randn(dims.as_slice(), (Kind::Float, Device::Cpu));
        guarded("OneStep::sample", || g.sample(&x, None))?
            .map_err(|e| format!("an accepted checkpoint does not run: {e}"))?
    };
    if out.size() != dims {
        return Err(format!(
            "garbage: model output of the wrong shape\n{:?} for input {dims:?} ({desc})",
            out.size()
        ));
    }
    if !all_finite(&out) && max_weight > 1e4 {
        // a flipped exponent bit in the data: no checksum can tell it from a real weight
        note("checkpoint: finite but huge weights (> 1e4) accepted, non-finite output");
        return Ok(());
    }
    if !all_finite(&out) {
        let t_in: Vec<f64> = match (&meta.kind, meta.architecture()) {
            (ModelKind::Teacher, _) => vec![meta.schedule.t_input(0.5)],
            (_, Architecture::Backbone) => vec![meta
                .schedule
                .t_input(*meta.times.as_ref().and_then(|t| t.last()).unwrap_or(&0.0))],
            (_, Architecture::Operator) => meta
                .times
                .iter()
                .flatten()
                .map(|&t| meta.schedule.t_input(t))
                .collect(),
        };
        let cause = if t_in.iter().all(|t| t.is_finite()) {
            "finite network times"
        } else {
            "a non-finite network time (schedule or output times)"
        };
        return Err(format!(
            "garbage: non-finite output of an accepted {:?} checkpoint with finite weights, {cause}\n{desc}, schedule {:?}, times {:?}, t_in {t_in:?}",
            meta.kind, meta.schedule, meta.times
        ));
    }
    Ok(())
}

fn bad_shape(shape: &[i64], desc: &str) -> Result<(), String> {
    if shape.iter().any(|&d| d < 1) {
        return Err(format!(
            "garbage: model accepted with a non-positive sample shape\n{shape:?} ({desc})"
        ));
    }
    Ok(())
}

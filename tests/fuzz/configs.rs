//! Fuzz target: TOML configs.
use super::*;

/// A mutation of a TOML config.
#[derive(Debug, Clone)]
enum TomlMut {
    Drop(usize),
    Dup(usize),
    Swap(usize, usize),
    /// The value of the i-th `key = value` line.
    Value(usize, String),
    Insert(usize, String),
    /// The value of the i-th `key = value` line replaced by arrays nested this deep.
    Nest(usize, usize),
    Byte(ByteMut),
}

fn toml_value() -> impl Strategy<Value = String> {
    let fixed: Vec<String> = [
        "0", "-1", "1", "2", "1e30", "-1e30", "nan", "inf", "-inf", "+nan", "1e-300", "0.0",
        "-0.0", "0.5", "1.5", "9223372036854775807", "-9223372036854775808",
        "18446744073709551615", "4294967296", "1000000000", "100000", "\"\"", "\"x\"",
        "\"nan\"", "true", "[]", "[0]", "[-1]", "[1e30]", "[nan]", "[1.0, 0.0]", "[0.0, 1.0]",
        "[0.5, 0.5]", "{}", "\"mlp\"", "\"unet\"", "\"dsno\"", "\"kd\"", "\"edm\"",
        "\"vp_linear\"", "\"vp_cosine\"", "\"idx\"", "\"toy2d\"", "\"l1\"", "\"uniform\"",
        "\"moons\"", "\"mnist\"", "[1, 2, 4, 8, 16, 32, 64]",
        "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    prop_oneof![
        6 => select(fixed),
        1 => any::<i64>().prop_map(|x| x.to_string()),
        1 => any::<f64>().prop_map(|x| format!("{x:e}")),
        1 => (0u32..2000).prop_map(|x| x.to_string()),
    ]
}

fn toml_line() -> impl Strategy<Value = String> {
    select(
        [
            "dropout = 0.5",
            "dropout = 1.0",
            "times = [0.5, 0.0]",
            "times = []",
            "times = [nan]",
            "times = [0.0, 0.5]",
            "modes = 0",
            "modes = 100",
            "channel_mult = []",
            "channel_mult = [1, 2, 4, 8, 16, 32]",
            "attn_resolutions = [28, 14, 7]",
            "num_heads = 0",
            "num_heads = 3",
            "groups = 0",
            "groups = -1",
            "image_size = 0",
            "image_size = -28",
            "image_size = 27",
            "blocks = 0",
            "hidden = 1",
            "hidden = 100000",
            "dim = 0",
            "lr_halve_at = [0]",
            "[model]",
            "kind = \"unet\"",
            "kind = \"mlp\"",
            "[schedule]",
            "kind = \"edm\"",
            "kind = \"vp_linear\"",
            "[data]",
            "source = \"idx\"",
            "name = \"mnist\"",
            "[train]",
            "[model.extra]",
            "x = 1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>(),
    )
}

fn toml_mut() -> impl Strategy<Value = TomlMut> {
    prop_oneof![
        2 => any::<usize>().prop_map(TomlMut::Drop),
        1 => any::<usize>().prop_map(TomlMut::Dup),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TomlMut::Swap(a, b)),
        8 => (any::<usize>(), toml_value()).prop_map(|(a, v)| TomlMut::Value(a, v)),
        2 => (any::<usize>(), toml_line()).prop_map(|(a, l)| TomlMut::Insert(a, l)),
        1 => (any::<usize>(), select(vec![20usize, 200, 100_000])).prop_map(|(a, d)| TomlMut::Nest(a, d)),
        2 => byte_mut().prop_map(TomlMut::Byte),
    ]
}

fn apply_toml(text: &str, ms: &[TomlMut]) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(|s| s.to_string()).collect();
    let mut bytes: Option<Vec<u8>> = None;
    for m in ms {
        if let Some(b) = bytes.take() {
            lines = String::from_utf8_lossy(&b)
                .lines()
                .map(|s| s.to_string())
                .collect();
        }
        let n = lines.len();
        let assigned: Vec<usize> = (0..n)
            .filter(|&i| lines[i].contains('=') && !lines[i].trim_start().starts_with('#'))
            .collect();
        match m {
            TomlMut::Drop(i) if n > 0 => {
                lines.remove(i % n);
            }
            TomlMut::Dup(i) if n > 0 => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            TomlMut::Swap(a, b) if n > 0 => lines.swap(a % n, b % n),
            TomlMut::Value(i, v) if !assigned.is_empty() => {
                let k = assigned[i % assigned.len()];
                let key = lines[k].split('=').next().unwrap().to_string();
                lines[k] = format!("{key}= {v}");
            }
            TomlMut::Insert(i, l) => lines.insert(i % (n + 1), l.clone()),
            TomlMut::Nest(i, d) if !assigned.is_empty() => {
                let k = assigned[i % assigned.len()];
                let key = lines[k].split('=').next().unwrap().to_string();
                lines[k] = format!("{key}= {}{}", "[".repeat(*d), "]".repeat(*d));
            }
            TomlMut::Byte(b) => {
                let mut x = lines.join("\n").into_bytes();
                apply_byte(&mut x, b);
                bytes = Some(x);
            }
            _ => {}
        }
    }
    bytes.unwrap_or_else(|| (lines.join("\n") + "\n").into_bytes())
}

fn bad_f(x: f64, ok: impl Fn(f64) -> bool) -> bool {
    !x.is_finite() || !ok(x)
}

/// Accepted values that cannot be meant (counted, not failures).
fn train_notes(t: &TrainConfig, what: &str) {
    let n = |field: &str| note(format!("config: {what} accepted with invalid {field}"));
    if t.steps == 0 {
        n("train.steps = 0");
    }
    if t.batch_size == 0 {
        n("train.batch_size = 0");
    }
    if bad_f(t.lr, |x| x > 0.0 && x < 10.0) {
        n("train.lr (≤ 0, ≥ 10 or non-finite)");
    }
    if bad_f(t.beta1, |x| (0.0..1.0).contains(&x)) || bad_f(t.beta2, |x| (0.0..1.0).contains(&x)) {
        n("train.beta1/beta2 (outside [0, 1))");
    }
    if bad_f(t.eps, |x| x > 0.0) {
        n("train.eps (≤ 0 or non-finite)");
    }
    if bad_f(t.ema_decay, |x| (0.0..=1.0).contains(&x)) {
        n("train.ema_decay (outside [0, 1])");
    }
    if bad_f(t.grad_clip, |x| x >= 0.0) {
        n("train.grad_clip (< 0 or non-finite)");
    }
    if t.checkpoint_every == 0 || t.log_every == 0 {
        n("train.checkpoint_every/log_every = 0");
    }
    if t.warmup > t.steps {
        n("train.warmup > train.steps");
    }
}

fn teacher_notes(c: &TeacherConfig) {
    train_notes(&c.train, "teacher config");
    let n = |field: &str| {
        note(format!(
            "config: teacher config accepted with invalid {field}"
        ))
    };
    let bad_schedule = match c.schedule {
        Schedule::VpCosine {
            lambda_min,
            lambda_max,
        } => !(lambda_min.is_finite() && lambda_max.is_finite() && lambda_min < lambda_max),
        Schedule::VpLinear { beta_min, beta_max } => {
            !(beta_min.is_finite()
                && beta_max.is_finite()
                && beta_min > 0.0
                && beta_max >= beta_min)
        }
        Schedule::Edm {
            sigma_min,
            sigma_max,
            rho,
        } => {
            !(sigma_min > 0.0
                && sigma_max.is_finite()
                && sigma_min < sigma_max
                && rho.is_finite()
                && rho > 0.0)
        }
        Schedule::Discrete {
            betas,
            beta_start,
            beta_end,
            steps,
        } => {
            let named = betas == dsno::schedule::BetaSchedule::SquaredcosCapV2
                || (beta_start > 0.0 && beta_end >= beta_start && beta_end < 1.0);
            !(named && steps >= 2)
        }
    };
    if bad_schedule {
        n("schedule parameters");
    }
    match &c.data {
        dsno::train::teacher::DataConfig::Toy2d { name, points, .. } => {
            if *points == 0 {
                n("data.points = 0");
            }
            if !dsno::data::toy2d::NAMES.contains(&name.as_str()) {
                n("data.name (unknown toy2d set)");
            }
        }
        dsno::train::teacher::DataConfig::Idx { name } => {
            if name != "mnist" && name != "fashion-mnist" {
                n("data.name (unknown IDX data set)");
            }
        }
    }
}

fn distill_notes(c: &DistillConfig) {
    train_notes(&c.train, "distillation config");
    let n = |field: &str| {
        note(format!(
            "config: distillation config accepted with invalid {field}"
        ))
    };
    if c.modes < 1 {
        n("modes (< 1)");
    }
    if c.dropout
        .is_some_and(|p| bad_f(p, |x| (0.0..1.0).contains(&x)))
    {
        n("dropout (outside [0, 1) or nan)");
    }
    if let Some(t) = &c.times {
        if t.is_empty()
            || t.iter().any(|x| !x.is_finite() || *x < 0.0)
            || t.windows(2).any(|w| w[0] <= w[1])
        {
            n("times (empty, negative, non-finite or not decreasing)");
        }
    }
}

/// Inputs: the TOML text (parsed as both kinds of config).
pub(crate) fn config_target() -> Target {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let bases: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let nb = bases.len();
    let strategy = prop_oneof![
        1 => vec(any::<u8>(), 0..64),
        9 => (0..nb, vec(toml_mut(), 0..5)).prop_map(move |(i, ms)| apply_toml(&bases[i], &ms)),
    ]
    .boxed();
    let path = dir.join("fuzz-case.toml");
    let check = move |input: &[u8]| -> Result<(), String> {
        let text = String::from_utf8_lossy(input);
        match guarded("TeacherConfig::from_toml", || {
            TeacherConfig::from_toml(&text, &path)
        })? {
            Err(e) => named(&e, &path, "TeacherConfig::from_toml")?,
            Ok(cfg) => {
                teacher_notes(&cfg);
                let params = guarded("ModelConfig::num_params", || cfg.model.num_params())?;
                if params > MAX_PARAMS {
                    note("config: model not built (num_params > 5e6)");
                } else {
                    let vs = nn::VarStore::new(Device::Cpu);
                    let built = guarded("ModelConfig::build", || {
                        cfg.model.build(&vs.root()).map(|_| ())
                    })?;
                    if let Err(e) = built {
                        if e.to_string().trim().is_empty() {
                            return Err(
                                "bad error: ModelConfig::build returned an empty message".into()
                            );
                        }
                        note("config: teacher config accepted whose model does not build");
                    }
                }
            }
        }
        match guarded("DistillConfig::from_toml", || {
            DistillConfig::from_toml(&text, &path)
        })? {
            Err(e) => named(&e, &path, "DistillConfig::from_toml"),
            Ok(cfg) => {
                distill_notes(&cfg);
                Ok(())
            }
        }
    };
    Target {
        strategy,
        check: Box::new(check),
    }
}

//! Fuzz target: the trajectory store.
use super::*;

struct TinyStore {
    dir: PathBuf,
    manifest: Manifest,
    text: String,
    shards: Vec<Vec<u8>>,
    /// A copy of the shards whose manifest each case replaces.
    case: PathBuf,
}

/// A store of `count` trajectories made by a freshly initialised teacher with `model`.
fn tiny_store(work: &Path, name: &str, model: ModelConfig, o: GenerateOptions) -> TinyStore {
    let tpath = work.join(format!("{name}-teacher.safetensors"));
    make_checkpoint(
        &tpath,
        meta(ModelKind::Teacher, model, Schedule::vp_cosine()),
        None,
    );
    let teacher = Teacher::load(&tpath, Device::Cpu).unwrap();
    let dir = work.join(name);
    generate(&teacher, &tpath, &dir, &o).unwrap();
    let manifest = Manifest::load(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let shards: Vec<Vec<u8>> = (0..manifest.shards())
        .map(|j| std::fs::read(shard_path(&dir, j)).unwrap())
        .collect();
    let case = work.join(format!("{name}-case"));
    std::fs::create_dir_all(&case).unwrap();
    for (j, s) in shards.iter().enumerate() {
        std::fs::write(shard_path(&case, j), s).unwrap();
    }
    TinyStore {
        dir,
        manifest,
        text,
        shards,
        case,
    }
}

fn options(times: Vec<f64>, count: usize, shard_size: usize, fp16: bool) -> GenerateOptions {
    GenerateOptions {
        solver: Solver::DpmSolver2M,
        steps: 4,
        times: OutputTimes::new(times).unwrap(),
        count,
        seed: 3,
        shard_size,
        batch: 4,
        fp16,
        part: (0, 1),
        class: None,
        guidance: None,
        progress: false,
        comm: Default::default(),
    }
}

/// A mutation of a manifest: a JSON edit, or bytes of its text.
#[derive(Debug, Clone)]
enum TextMut {
    Json(Sel, JsonEdit),
    Byte(ByteMut),
}

/// Inputs: mode, store, shard index, then the payload. Mode 0: `Manifest::parse` of the
/// payload; 1: `parse_shard` of the payload as shard `j` of the store; 2: `load_store` of the
/// store with the payload as its manifest.
pub(crate) fn store_target(work: &Path) -> Target {
    let stores = std::sync::Arc::new(vec![
        tiny_store(
            work,
            "mlp",
            ModelConfig::Mlp(tiny_mlp()),
            options(vec![0.25, 0.0], 7, 3, false),
        ),
        tiny_store(
            work,
            "unet",
            ModelConfig::Unet(tiny_unet()),
            options(vec![0.5, 0.2, 0.0], 4, 2, true),
        ),
    ]);
    let s2 = stores.clone();
    let manifest_case = move |mode: u8| {
        let s3 = s2.clone();
        let edit = prop_oneof![
            4 => (sel(MANIFEST_KEYS), json_edit()).prop_map(|(a, e)| TextMut::Json(a, e)),
            1 => byte_mut().prop_map(TextMut::Byte),
        ];
        (0..2usize, vec(edit, 1..4)).prop_map(move |(si, ms)| {
            let mut text = s3[si].text.clone();
            for m in &ms {
                match m {
                    TextMut::Json(at, e) => {
                        if let Ok(mut v) = serde_json::from_str::<Value>(&text) {
                            edit_json(&mut v, at, e);
                            text = json_text(&v);
                        }
                    }
                    TextMut::Byte(b) => {
                        let mut bytes = text.into_bytes();
                        apply_byte(&mut bytes, b);
                        text = String::from_utf8_lossy(&bytes).into_owned();
                    }
                }
            }
            let mut v = vec![mode, si as u8, 0];
            v.extend_from_slice(text.as_bytes());
            v
        })
    };
    let s4 = stores.clone();
    let shard_case = (0..2usize, 0u8..4, vec(st_mut(false), 1..4)).prop_map(move |(si, j, ms)| {
        let shards = &s4[si].shards;
        let mut b = shards[j as usize % shards.len()].clone();
        for m in &ms {
            apply_st(&mut b, m);
        }
        // usually parsed as the shard it is, sometimes as another one
        let as_j = if j == 3 { 1 } else { j % shards.len() as u8 };
        let mut v = vec![1, si as u8, as_j];
        v.extend(b);
        v
    });
    let strategy = prop_oneof![
        3 => manifest_case(0),
        4 => shard_case,
        3 => manifest_case(2),
    ]
    .boxed();
    let check = move |input: &[u8]| -> Result<(), String> {
        if input.len() < 3 {
            return Ok(());
        }
        let (mode, si, j, payload) = (input[0] % 3, input[1] as usize % 2, input[2], &input[3..]);
        let s = &stores[si];
        match mode {
            0 => {
                let path = s.dir.join("manifest.json");
                let text = String::from_utf8_lossy(payload);
                match guarded("Manifest::parse", || Manifest::parse(&text, &path))? {
                    Err(e) => named(&e, &path, "Manifest::parse"),
                    Ok(m) => check_manifest(&m),
                }
            }
            1 => {
                let j = j as usize;
                let path = shard_path(&s.dir, j);
                match guarded("parse_shard", || {
                    parse_shard(payload, &path, &s.manifest, j)
                })? {
                    Err(e) => named(&e, &path, "parse_shard"),
                    Ok(sh) => check_shard(&sh, &s.manifest, j),
                }
            }
            _ => {
                std::fs::write(s.case.join("manifest.json"), payload).unwrap();
                match guarded("load_store", || load_store(&s.case))? {
                    Err(e) => named(&e, &s.case, "load_store"),
                    Ok(st) => {
                        let m = &st.manifest;
                        let mut want_x = vec![m.count as i64];
                        want_x.extend(&m.sample_shape);
                        let mut want_t = vec![m.count as i64, m.times.len() as i64];
                        want_t.extend(&m.sample_shape);
                        if st.x_t.size() != want_x || st.targets.size() != want_t {
                            return Err(format!(
                                "garbage: load_store returned tensors of other shapes than its manifest\nx_T {:?}, targets {:?} for a manifest of {} samples of {:?} at {} times",
                                st.x_t.size(),
                                st.targets.size(),
                                m.count,
                                m.sample_shape,
                                m.times.len()
                            ));
                        }
                        check_manifest(m)
                    }
                }
            }
        }
    };
    Target {
        strategy,
        check: Box::new(check),
    }
}

/// What the rest of the library relies on in a manifest.
fn check_manifest(m: &Manifest) -> Result<(), String> {
    if m.shard_size == 0 {
        return Err(
            "garbage: manifest with shard_size = 0 accepted (Manifest::shards divides by it)"
                .into(),
        );
    }
    if m.sample_shape.is_empty() || m.sample_shape.iter().any(|&d| d < 1) {
        return Err(format!(
            "garbage: manifest with an empty or non-positive sample_shape accepted\n{:?}",
            m.sample_shape
        ));
    }
    if m.times.is_empty() {
        return Err("garbage: manifest without output times accepted".into());
    }
    if m.times.windows(2).any(|w| w[0] <= w[1]) || m.times.iter().any(|&t| t < 0.0) {
        return Err(format!(
            "garbage: manifest with output times not decreasing from t_1 > … > t_M ≥ 0 accepted\n{:?}",
            m.times
        ));
    }
    if m.dtype != "f32" && m.dtype != "f16" {
        return Err(format!(
            "garbage: manifest with a dtype other than f32/f16 accepted\n{:?}",
            m.dtype
        ));
    }
    if m.format != FORMAT {
        note("store: manifest of another format accepted by Manifest::parse");
    }
    if m.count == 0 {
        note("store: manifest with count = 0 accepted by Manifest::parse");
    }
    let shards = guarded("Manifest::shards", || m.shards())?;
    if shards > 0 {
        let (lo, hi) = guarded("Manifest::shard_range", || m.shard_range(shards - 1))?;
        if lo > hi || hi != m.count {
            return Err(format!(
                "garbage: manifest whose last shard range is wrong\n{} samples in shards of {}: last shard range {lo}..{hi}",
                m.count, m.shard_size
            ));
        }
    }
    Ok(())
}

fn check_shard(s: &Shard, m: &Manifest, j: usize) -> Result<(), String> {
    let (lo, hi) = m.shard_range(j);
    let n = (hi - lo) as i64;
    let mt = m.times.len() as i64;
    let mut want_x = vec![n];
    want_x.extend(&m.sample_shape);
    let mut want_t = vec![n, mt];
    want_t.extend(&m.sample_shape);
    if s.x_t.size() != want_x
        || s.targets.size() != want_t
        || s.lambdas.size() != [mt]
        || s.indices.size() != [n]
    {
        return Err(format!(
            "garbage: shard accepted whose shapes are not the manifest's\nx_T {:?}, targets {:?}, lambdas {:?}, indices {:?} (manifest: {want_x:?}, {want_t:?})",
            s.x_t.size(),
            s.targets.size(),
            s.lambdas.size(),
            s.indices.size()
        ));
    }
    let kind = if m.dtype == "f16" {
        Kind::Half
    } else {
        Kind::Float
    };
    if s.x_t.kind() != kind || s.targets.kind() != kind {
        return Err(format!(
            "garbage: shard accepted whose x_T/targets kinds are not the manifest dtype\nx_T {:?}, targets {:?} (manifest dtype {})",
            s.x_t.kind(),
            s.targets.kind(),
            m.dtype
        ));
    }
    if !s.lambdas.is_floating_point() {
        return Err(format!(
            "garbage: shard with non-floating lambdas accepted\n{:?}",
            s.lambdas.kind()
        ));
    }
    if !(all_finite(&s.x_t) && all_finite(&s.targets) && all_finite(&s.lambdas)) {
        note("store: shard with non-finite values accepted by parse_shard");
    }
    Ok(())
}

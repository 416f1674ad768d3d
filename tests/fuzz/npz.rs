//! Fuzz target: FID statistics (.npz).
use super::*;

fn npz_bases() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out: Vec<Vec<u8>> = [
        "stats-numpy.npz",
        "stats-numpy-compressed.npz",
        "stats-numpy-fortran.npz",
    ]
    .iter()
    .map(|f| std::fs::read(dir.join(f)).unwrap())
    .collect();
    let mu = dsno::util::npz::Array::new(vec![3], vec![0.5, -1.0, 2.0]).unwrap();
    let sigma =
        dsno::util::npz::Array::new(vec![3, 3], (0..9).map(|i| i as f64).collect()).unwrap();
    let mut names = vec![];
    for (n, a) in [("mu.npy", &mu), ("sigma.npy", &sigma)] {
        names.push((n, dsno::util::npz::encode_npy(a)));
    }
    let files: Vec<(&str, &[u8])> = names.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    out.push(dsno::util::zip::stored_archive(&files).unwrap());
    out
}

pub(crate) fn npz_target(work: &Path) -> Target {
    let bases = npz_bases();
    let strategy = prop_oneof![
        1 => vec(any::<u8>(), 0..64),
        6 => (select(bases), vec(byte_mut(), 1..6)).prop_map(|(mut b, ms)| {
            for m in &ms {
                apply_byte(&mut b, m);
            }
            b
        }),
    ]
    .boxed();
    let path = work.join("case.npz");
    let check = move |input: &[u8]| -> Result<(), String> {
        std::fs::write(&path, input).unwrap();
        match guarded("FidStats::read", || FidStats::read(&path))? {
            Err(e) => named(&e, &path, "npz"),
            Ok(s) => {
                let (m, c) = (s.mu.size(), s.sigma.size());
                if m.len() != 1 || c != [m[0], m[0]] || !all_finite(&s.mu) || !all_finite(&s.sigma)
                {
                    return Err(format!(
                        "garbage: statistics accepted with mu {m:?}, sigma {c:?}"
                    ));
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

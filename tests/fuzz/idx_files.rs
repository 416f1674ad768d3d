//! Fuzz target: IDX files.
use super::*;

/// A valid IDX file: `0 0 8 nd`, `nd` big-endian u32 sizes, then the bytes.
fn valid_idx() -> impl Strategy<Value = Vec<u8>> {
    vec(0u32..5, 1..=4).prop_flat_map(|dims| {
        let n = dims.iter().product::<u32>() as usize;
        vec(any::<u8>(), n).prop_map(move |data| {
            let mut b = vec![0, 0, 8, dims.len() as u8];
            for d in &dims {
                b.extend_from_slice(&d.to_be_bytes());
            }
            b.extend_from_slice(&data);
            b
        })
    })
}

/// A mutation of an IDX file.
#[derive(Debug, Clone)]
enum IdxMut {
    Byte(ByteMut),
    /// Size `i` (modulo the dimension count) set to a value.
    Dim(usize, u32),
    /// The dimension count byte.
    Ndims(u8),
    /// Byte `i` of the magic.
    Magic(usize, u8),
}

fn idx_mut() -> impl Strategy<Value = IdxMut> {
    let dims = select(vec![
        0u32,
        1,
        2,
        3,
        0x100,
        0x1_0000,
        0x8000_0000,
        0xFFFF_FFFF,
        0xFFFF_FFFE,
    ]);
    prop_oneof![
        3 => byte_mut().prop_map(IdxMut::Byte),
        3 => (any::<usize>(), prop_oneof![3 => dims, 1 => any::<u32>()])
            .prop_map(|(i, v)| IdxMut::Dim(i, v)),
        1 => any::<u8>().prop_map(IdxMut::Ndims),
        1 => (0usize..4, any::<u8>()).prop_map(|(i, v)| IdxMut::Magic(i, v)),
    ]
}

fn apply_idx(mut b: Vec<u8>, ms: &[IdxMut]) -> Vec<u8> {
    for m in ms {
        match m {
            IdxMut::Byte(x) => apply_byte(&mut b, x),
            IdxMut::Dim(i, v) => {
                let nd = b.get(3).map_or(0, |&x| x as usize).clamp(1, 4);
                let at = 4 + 4 * (i % nd);
                if b.len() >= at + 4 {
                    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
            IdxMut::Ndims(v) if b.len() > 3 => b[3] = *v,
            IdxMut::Magic(i, v) if b.len() > *i => b[*i] = *v,
            _ => {}
        }
    }
    b
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn with_mode(mode: u8, payload: Vec<u8>) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend(payload);
    v
}

/// Inputs: a mode byte, then the payload. Mode 0: `parse(payload)`; 1: `read` of the payload
/// gzipped; 2: `read` of the payload as is (corrupt gzip streams).
pub(crate) fn idx_target(work: &Path) -> Target {
    let strategy = prop_oneof![
        2 => vec(any::<u8>(), 0..48).prop_map(|b| with_mode(0, b)),
        5 => (valid_idx(), vec(idx_mut(), 0..4)).prop_map(|(f, ms)| with_mode(0, apply_idx(f, &ms))),
        1 => (valid_idx(), vec(idx_mut(), 0..3)).prop_map(|(f, ms)| with_mode(1, apply_idx(f, &ms))),
        1 => (valid_idx(), vec(byte_mut(), 1..4)).prop_map(|(f, ms)| {
            let mut g = gzip(&f);
            for m in &ms {
                apply_byte(&mut g, m);
            }
            with_mode(2, g)
        }),
    ]
    .boxed();
    let (raw, gz) = (
        work.join("case-idx3-ubyte"),
        work.join("case-idx3-ubyte.gz"),
    );
    let check = move |input: &[u8]| -> Result<(), String> {
        let Some((&mode, payload)) = input.split_first() else {
            return Ok(());
        };
        let (r, path, plain) = match mode % 3 {
            0 => (
                guarded("idx::parse", || idx::parse(payload, &raw))?,
                &raw,
                Some(payload.to_vec()),
            ),
            1 => {
                std::fs::write(&gz, gzip(payload)).unwrap();
                (
                    guarded("idx::read", || idx::read(&gz))?,
                    &gz,
                    Some(payload.to_vec()),
                )
            }
            _ => {
                std::fs::write(&gz, payload).unwrap();
                (guarded("idx::read", || idx::read(&gz))?, &gz, None)
            }
        };
        match r {
            Err(e) => named(&e, path, "idx"),
            Ok(x) => {
                let want = x.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                if x.dims.is_empty() || x.dims.len() > 4 || want != Some(x.data.len()) {
                    return Err(format!(
                        "garbage: idx accepted whose data does not fill its dimensions\ndims {:?}, {} data bytes",
                        x.dims,
                        x.data.len()
                    ));
                }
                if let Some(p) = plain {
                    let header = 4 + 4 * x.dims.len();
                    if p.get(header..) != Some(&x.data[..]) {
                        return Err("garbage: idx data is not the file's bytes".into());
                    }
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

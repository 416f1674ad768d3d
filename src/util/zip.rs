//! The little of the ZIP format dsno needs: listing and extracting the entries of an archive
//! (stored or deflated, as in Python wheels and numpy's `.npz`), and writing an archive of stored
//! entries (numpy's `savez` layout). ZIP64 archives, encryption and multi-disk archives are
//! refused with a message saying so.
//!
//! Errors are plain strings; callers attach the file name.
use std::io::{Read, Seek, SeekFrom, Write};

const EOCD_SIG: u32 = 0x0605_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: u64 = 22;

/// One entry of an archive's central directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's path inside the archive.
    pub name: String,
    /// 0 stored, 8 deflated (anything else is refused by [`extract`]).
    pub method: u16,
    /// CRC-32 of the uncompressed content.
    pub crc32: u32,
    /// Bytes as stored in the archive.
    pub compressed_size: u64,
    /// Bytes once extracted.
    pub size: u64,
    local_offset: u64,
    flags: u16,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn io(e: std::io::Error) -> String {
    format!("cannot read the archive: {e}")
}

/// The entries of the archive read by `r`, in central-directory order.
pub fn entries<R: Read + Seek>(r: &mut R) -> Result<Vec<Entry>, String> {
    let len = r.seek(SeekFrom::End(0)).map_err(io)?;
    if len < EOCD_LEN {
        return Err(format!("not a ZIP archive ({len} bytes)"));
    }
    // The end record is the last 22 bytes plus a comment of at most 65,535 bytes.
    let tail_len = len.min(EOCD_LEN + 0xFFFF);
    let mut tail = vec![0u8; tail_len as usize];
    r.seek(SeekFrom::Start(len - tail_len)).map_err(io)?;
    r.read_exact(&mut tail).map_err(io)?;
    let at = (0..=tail.len() - EOCD_LEN as usize)
        .rev()
        .find(|&i| u32_at(&tail, i) == EOCD_SIG)
        .ok_or("not a ZIP archive (no end-of-central-directory record)")?;
    let e = &tail[at..];
    let (disk, cd_disk) = (u16_at(e, 4), u16_at(e, 6));
    let (count, cd_size, cd_offset) = (u16_at(e, 10), u32_at(e, 12), u32_at(e, 16));
    if count == 0xFFFF || cd_size == u32::MAX || cd_offset == u32::MAX {
        return Err("ZIP64 archives are not supported".into());
    }
    if disk != 0 || cd_disk != 0 {
        return Err("multi-disk ZIP archives are not supported".into());
    }
    let eocd_pos = len - tail_len + at as u64;
    if cd_offset as u64 + cd_size as u64 > eocd_pos {
        return Err("corrupt ZIP archive: the central directory lies past its end record".into());
    }
    let mut cd = vec![0u8; cd_size as usize];
    r.seek(SeekFrom::Start(cd_offset as u64)).map_err(io)?;
    r.read_exact(&mut cd).map_err(io)?;
    let mut out = Vec::with_capacity(count as usize);
    let mut i = 0usize;
    for k in 0..count {
        if i + 46 > cd.len() || u32_at(&cd, i) != CENTRAL_SIG {
            return Err(format!(
                "corrupt ZIP archive: central directory entry {k} is damaged"
            ));
        }
        let (n, x, c) = (
            u16_at(&cd, i + 28) as usize,
            u16_at(&cd, i + 30) as usize,
            u16_at(&cd, i + 32) as usize,
        );
        if i + 46 + n + x + c > cd.len() {
            return Err(format!(
                "corrupt ZIP archive: central directory entry {k} is cut off"
            ));
        }
        let name = String::from_utf8_lossy(&cd[i + 46..i + 46 + n]).into_owned();
        out.push(Entry {
            name,
            method: u16_at(&cd, i + 10),
            crc32: u32_at(&cd, i + 16),
            compressed_size: u32_at(&cd, i + 20) as u64,
            size: u32_at(&cd, i + 24) as u64,
            local_offset: u32_at(&cd, i + 42) as u64,
            flags: u16_at(&cd, i + 8),
        });
        i += 46 + n + x + c;
    }
    Ok(out)
}

/// Extracts `entry` of the archive read by `r` into `w`, checking its size and CRC-32; an entry
/// larger than `max_size` bytes is refused before anything is read. Returns the bytes written.
pub fn extract<R: Read + Seek, W: Write>(
    r: &mut R,
    entry: &Entry,
    w: &mut W,
    max_size: u64,
) -> Result<u64, String> {
    let what = &entry.name;
    if entry.flags & 1 != 0 {
        return Err(format!("{what}: encrypted ZIP entries are not supported"));
    }
    if entry.size > max_size {
        return Err(format!(
            "{what}: {} bytes, more than the {max_size} allowed",
            entry.size
        ));
    }
    let mut head = [0u8; 30];
    r.seek(SeekFrom::Start(entry.local_offset)).map_err(io)?;
    r.read_exact(&mut head).map_err(io)?;
    if u32_at(&head, 0) != LOCAL_SIG {
        return Err(format!("{what}: corrupt ZIP archive (bad local header)"));
    }
    let skip = u16_at(&head, 26) as i64 + u16_at(&head, 28) as i64;
    r.seek(SeekFrom::Current(skip)).map_err(io)?;
    let raw = r.take(entry.compressed_size);
    let mut body: Box<dyn Read + '_> = match entry.method {
        0 => Box::new(raw),
        8 => Box::new(flate2::read::DeflateDecoder::new(raw)),
        m => return Err(format!("{what}: compression method {m} is not supported")),
    };
    let mut crc = flate2::Crc::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{what}: corrupt or truncated data: {e}")),
        };
        got += n as u64;
        if got > entry.size {
            return Err(format!(
                "{what}: more data than the {} bytes declared",
                entry.size
            ));
        }
        crc.update(&buf[..n]);
        w.write_all(&buf[..n])
            .map_err(|e| format!("{what}: cannot write: {e}"))?;
    }
    if got != entry.size {
        return Err(format!("{what}: truncated: {got} of {} bytes", entry.size));
    }
    if crc.sum() != entry.crc32 {
        return Err(format!(
            "{what}: CRC-32 {:08x} does not match the {:08x} recorded (corrupt data)",
            crc.sum(),
            entry.crc32
        ));
    }
    Ok(got)
}

/// An archive of `files` (name, content), stored uncompressed, with every timestamp set to
/// 1980-01-01 00:00, so the same content always gives the same bytes.
pub fn stored_archive(files: &[(&str, &[u8])]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = u32::try_from(out.len()).map_err(|_| "archive over 4 GiB (ZIP64)")?;
        let size = u32::try_from(data.len()).map_err(|_| format!("{name}: over 4 GiB"))?;
        let mut crc = flate2::Crc::new();
        crc.update(data);
        // version 2.0, no flags, stored, time 00:00, date 1980-01-01, crc, sizes, name length.
        let common = |v: &mut Vec<u8>| {
            for x in [20u16, 0, 0, 0, 0x21] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            for x in [crc.sum(), size, size] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
        };
        out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(&0u16.to_le_bytes()); // extra length
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // made by: version 2.0
        common(&mut central);
        for _ in 0..4 {
            central.extend_from_slice(&0u16.to_le_bytes()); // extra, comment, disk, attributes
        }
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = u32::try_from(out.len()).map_err(|_| "archive over 4 GiB (ZIP64)")?;
    let n = u16::try_from(files.len()).map_err(|_| "more than 65,535 entries")?;
    out.extend_from_slice(&central);
    out.extend_from_slice(&EOCD_SIG.to_le_bytes());
    for x in [0u16, 0, n, n] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn stored_archive_round_trips_and_detects_corruption() {
        let files: [(&str, &[u8]); 2] = [("a.npy", b"hello"), ("dir/b.bin", &[7u8; 1000])];
        let zip = stored_archive(&files).unwrap();
        let mut c = Cursor::new(zip.clone());
        let list = entries(&mut c).unwrap();
        assert_eq!(list.len(), 2);
        for ((name, data), e) in files.iter().zip(&list) {
            assert_eq!(&e.name, name);
            let mut out = Vec::new();
            assert_eq!(
                extract(&mut c, e, &mut out, 1 << 20).unwrap(),
                data.len() as u64
            );
            assert_eq!(&out, data);
        }
        assert!(extract(&mut c, &list[1], &mut Vec::new(), 999)
            .unwrap_err()
            .contains("allowed"));
        // Flip one content byte of the second entry: the CRC check catches it.
        let mut bad = zip.clone();
        let pos = bad.windows(3).position(|w| w == [7, 7, 7]).unwrap();
        bad[pos + 10] ^= 1;
        let mut c = Cursor::new(bad);
        let err = extract(&mut c, &list[1], &mut Vec::new(), 1 << 20).unwrap_err();
        assert!(err.contains("CRC-32"), "{err}");
        // Truncated archives have no end record.
        let err = entries(&mut Cursor::new(zip[..zip.len() - 5].to_vec())).unwrap_err();
        assert!(err.contains("end-of-central-directory"), "{err}");
    }

    #[test]
    fn reads_deflated_entries() {
        use flate2::write::DeflateEncoder;
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut enc = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).unwrap();
        let packed = enc.finish().unwrap();
        // Build a stored archive, then patch the one entry into a deflated one.
        let zip = stored_archive(&[("x", &data)]).unwrap();
        let mut c = Cursor::new(zip.clone());
        let e = entries(&mut c).unwrap().remove(0);
        let mut z = zip[..30].to_vec();
        z[8] = 8; // method
        z[18..22].copy_from_slice(&(packed.len() as u32).to_le_bytes());
        z.push(b'x');
        z.extend_from_slice(&packed);
        let cd_start = z.len() as u32;
        let mut cd = zip[30 + 1 + data.len()..zip.len() - 22].to_vec();
        cd[10] = 8;
        cd[20..24].copy_from_slice(&(packed.len() as u32).to_le_bytes());
        z.extend_from_slice(&cd);
        let mut eocd = zip[zip.len() - 22..].to_vec();
        eocd[16..20].copy_from_slice(&cd_start.to_le_bytes());
        z.extend_from_slice(&eocd);
        let mut c = Cursor::new(z);
        let d = entries(&mut c).unwrap().remove(0);
        assert_eq!((d.method, d.size, d.crc32), (8, e.size, e.crc32));
        let mut out = Vec::new();
        extract(&mut c, &d, &mut out, 1 << 20).unwrap();
        assert_eq!(out, data);
    }
}

//! Reading an input batch from a `.npy` file: a path enters, a float32 array leaves (the model checks its
//! shape), or an [`Error::File`] saying what is wrong with the file.
//!
//! Hostile files are refused before memory is allocated for them: the path must be a regular file of at
//! most [`MAX_INPUT_BYTES`]; the header must be short ([`MAX_HEADER_BYTES`]) and shallow; and the data it
//! declares (shape × 4 bytes of float32) must be exactly what the file holds after the header. Only then is
//! the data read, straight into the array's buffer. The header is parsed by `ndarray-npy`.

use crate::files::{human_bytes, open_regular};
use crate::ops::fmt_shape;
use crate::report::thousands;
use crate::Error;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_npy::npy::header::{Header, Layout};
use std::io::Read;
use std::path::Path;

/// The largest input batch file: 1 GiB, e.g. 1,783 images of 224x224x3.
pub const MAX_INPUT_BYTES: u64 = 1 << 30;
/// The largest `.npy` header (numpy writes 118 bytes for a 4-D float32 array).
pub const MAX_HEADER_BYTES: usize = 4096;
/// How deeply the header's Python literal may nest brackets (a float32 array's header nests 2 levels). The
/// literal parser takes time exponential in the depth: 12 levels take 70 ms, 30 would take hours.
const MAX_HEADER_NESTING: usize = 4;
const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a float32 `.npy` file (little- or big-endian, C or Fortran order) of at most [`MAX_INPUT_BYTES`].
pub fn read_batch(path: impl AsRef<Path>) -> Result<ArrayD<f32>, Error> {
    let path = path.as_ref();
    let fail = |reason: String| Error::File { path: path.to_owned(), reason };
    let (mut file, len) = open_regular(path, MAX_INPUT_BYTES, "an input batch").map_err(fail)?;
    let mut prefix = vec![0u8; (len as usize).min(12 + MAX_HEADER_BYTES)];
    file.read_exact(&mut prefix).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    let (header, data_start) = parse_header(&prefix).map_err(|e| fail(format!("not a .npy file: {e}")))?;
    let big_endian = match header.type_descriptor.as_string().map(String::as_str) {
        Some("<f4") => false,
        Some(">f4") => true,
        Some(d @ ("<f8" | ">f8")) => {
            return Err(fail(format!(
                "the array is float64 (`{d}`), expected float32 (`<f4`): save it with x.astype('float32')"
            )))
        }
        _ => return Err(fail(format!("the array's dtype is `{}`, expected float32 (`<f4`)", header.type_descriptor))),
    };
    let shape = header.shape.clone();
    let declared =
        shape.iter().try_fold(4u64, |acc, &d| acc.checked_mul(d as u64)).filter(|&b| b <= MAX_INPUT_BYTES).ok_or_else(
            || {
                fail(format!(
                    "the header declares shape {}, more than {} of float32",
                    fmt_shape(&shape),
                    human_bytes(MAX_INPUT_BYTES)
                ))
            },
        )?;
    let held = len - data_start as u64;
    if declared != held {
        return Err(fail(format!(
            "the header declares shape {} ({} bytes of float32), but the file holds {} bytes after the header",
            fmt_shape(&shape),
            thousands(declared),
            thousands(held)
        )));
    }
    let mut data = vec![0f32; (declared / 4) as usize];
    // SAFETY: any bytes are a valid f32; the slice covers exactly the vector's initialized elements.
    let bytes = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr() as *mut u8, declared as usize) };
    let in_prefix = prefix.len() - data_start;
    bytes[..in_prefix].copy_from_slice(&prefix[data_start..]);
    file.read_exact(&mut bytes[in_prefix..]).map_err(|e| {
        fail(format!("cannot read the array's data ({e}): was the file changed while it was being read?"))
    })?;
    for v in &mut data {
        let raw = v.to_bits();
        *v = f32::from_bits(if big_endian { u32::from_be(raw) } else { u32::from_le(raw) });
    }
    let dim = IxDyn(&shape);
    let array = match header.layout {
        Layout::Standard => ArrayD::from_shape_vec(dim, data),
        Layout::Fortran => ArrayD::from_shape_vec(dim.f(), data),
    };
    array.map_err(|e| fail(format!("the data does not fit shape {}: {e}", fmt_shape(&shape))))
}

/// Parses the header at the start of `bytes` (which holds at least the header when the file is valid);
/// returns it and the offset where the data starts.
fn parse_header(bytes: &[u8]) -> Result<(Header, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("it does not start with the .npy magic string `\\x93NUMPY`".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unknown format version {v}")),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "the header is {} bytes long; at most {} are read",
            thousands(header_len as u64),
            thousands(MAX_HEADER_BYTES as u64)
        ));
    }
    let end = start + header_len;
    let Some(text) = bytes.get(start..end) else {
        return Err(format!("the header is {header_len} bytes long, but the file ends before it does"));
    };
    // The literal parser backtracks, in time exponential in the nesting: refuse deep nesting before parsing.
    let mut depth = 0usize;
    for &c in text {
        match c {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_HEADER_NESTING {
                    return Err(format!("the header nests brackets more than {MAX_HEADER_NESTING} levels deep"));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let header = Header::from_reader(&mut &bytes[..end]).map_err(|e| e.to_string())?;
    Ok((header, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("resnetc-npy-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A v1 .npy file with the given header dictionary and data bytes, padded as numpy pads it.
    fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut h = dict.as_bytes().to_vec();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out
    }

    fn err(name: &str, bytes: &[u8]) -> String {
        let p = tmp(name, bytes);
        let e = read_batch(&p).err().expect("refused").to_string();
        let _ = std::fs::remove_file(&p);
        assert!(e.starts_with(&format!("{}: error: ", p.display())), "{e}");
        e
    }

    #[test]
    fn reads_what_ndarray_npy_writes_in_both_orders() {
        let x = Array4::<f32>::from_shape_fn((2, 3, 4, 5), |(a, b, c, d)| (a * 60 + b * 20 + c * 5 + d) as f32 - 0.5);
        let p = std::env::temp_dir().join(format!("resnetc-npy-{}-ok.npy", std::process::id()));
        ndarray_npy::write_npy(&p, &x).unwrap();
        assert_eq!(read_batch(&p).unwrap(), x.clone().into_dyn());
        let xf = x.t().as_standard_layout().into_owned(); // reversed axes, written as C order
        let bytes: Vec<u8> = xf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3, 4, 5), }", &bytes);
        std::fs::write(&p, f).unwrap();
        assert_eq!(read_batch(&p).unwrap(), x.clone().into_dyn());
        let be: Vec<u8> = x.iter().flat_map(|v| v.to_be_bytes()).collect();
        std::fs::write(&p, npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3, 4, 5), }", &be)).unwrap();
        assert_eq!(read_batch(&p).unwrap(), x.into_dyn());
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_huge_declared_shape_is_refused_before_allocating() {
        let e =
            err("huge", &npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 224, 224, 3), }", &[0; 64]));
        assert!(e.contains("declares shape [1000000, 224, 224, 3], more than 1 GiB of float32"), "{e}");
        let e = err(
            "overflow",
            &npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }", &[]),
        );
        assert!(e.contains("more than 1 GiB of float32"), "{e}");
        let e = err("short", &npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2, 3), }", &[0; 40]));
        assert!(e.contains("declares shape [1, 2, 2, 3] (48 bytes of float32), but the file holds 40 bytes"), "{e}");
        let e = err("long", &npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", &[0; 12]));
        assert!(e.contains("(8 bytes of float32), but the file holds 12 bytes"), "{e}");
    }

    #[test]
    fn malformed_headers_are_refused() {
        let e = err("magic", b"not numpy at all");
        assert!(e.contains("not a .npy file: it does not start with the .npy magic string"), "{e}");
        let e = err("f64", &npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", &[0; 8]));
        assert!(e.contains("float64 (`<f8`), expected float32 (`<f4`): save it with x.astype('float32')"), "{e}");
        let e = err("i4", &npy("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }", &[0; 4]));
        assert!(e.contains("dtype is `'<i4'`, expected float32"), "{e}");
        let deep =
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {}1{}, }}", "(".repeat(10), ")".repeat(10));
        let e = err("deep", &npy(&deep, &[]));
        assert!(e.contains("nests brackets more than 4 levels deep"), "{e}");
        // A v2 header that claims 4 GB.
        let mut v2 = MAGIC.to_vec();
        v2.extend_from_slice(&[2, 0]);
        v2.extend_from_slice(&u32::MAX.to_le_bytes());
        v2.extend_from_slice(b"{'descr'");
        let e = err("v2", &v2);
        assert!(e.contains("the header is 4,294,967,295 bytes long; at most 4,096 are read"), "{e}");
        let e = err("cut", &npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", &[])[..30]);
        assert!(e.contains("the file ends before it does"), "{e}");
        let e = err("v9", b"\x93NUMPY\x09\x00\x10\x00{}");
        assert!(e.contains("unknown format version 9"), "{e}");
    }

    #[test]
    fn devices_and_directories_are_refused() {
        for (p, what) in [("/dev/zero", "a character device"), ("/", "a directory")] {
            let e = read_batch(Path::new(p)).err().unwrap().to_string();
            assert_eq!(e, format!("{p}: error: an input batch must be a regular file, found {what}"));
        }
    }
}

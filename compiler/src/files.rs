//! Opening the files a user names (weights, input batches) safely: a path enters, an open regular file and
//! its length leave — or the reason it was refused, before anything is read.
//!
//! Refused: paths that are not regular files (a device such as `/dev/zero` would be read until memory runs
//! out, a FIFO would block forever, a directory cannot be read) and files larger than the caller's bound.
//! The check is made on the opened file itself (`fstat`), and on Linux the file is opened non-blocking, so
//! that a FIFO is refused instead of waiting for a writer.

use crate::report::thousands;
use std::fs::File;
use std::path::Path;

/// Opens `path` if it is a regular file of at most `max_bytes`; `what` names the file in the refusal
/// (e.g. "a weights file"). Returns the file and its length, or a reason without the path.
pub fn open_regular(path: &Path, max_bytes: u64, what: &str) -> Result<(File, u64), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading would wait for a writer; non-blocking, it opens and is refused below.
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| format!("cannot open {what}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read the size of {what}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what} must be a regular file, found {}", kind(&meta.file_type())));
    }
    let len = meta.len();
    if len > max_bytes {
        return Err(format!("the file is {} bytes; {what} may be at most {}", thousands(len), human_bytes(max_bytes)));
    }
    Ok((file, len))
}

/// What a non-regular file is, for messages.
fn kind(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "a special file"
}

/// A byte count for messages: limits (exact multiples of a GiB or MiB) in binary units, other sizes of
/// 100 KB and up in MB with one decimal: `1 GiB`, `16 MiB`, `102.1 MB`, `4,096 bytes`.
pub fn human_bytes(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    if n >= 100_000 {
        format!("{:.1} MB", n as f64 / 1e6)
    } else {
        format!("{} bytes", thousands(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_regular_file_or_too_large() {
        let e = open_regular(Path::new("/dev/zero"), 1 << 30, "an input batch").err().unwrap();
        assert_eq!(e, "an input batch must be a regular file, found a character device");
        let e = open_regular(Path::new("/"), 1 << 30, "a weights file").err().unwrap();
        assert_eq!(e, "a weights file must be a regular file, found a directory");
        let e = open_regular(Path::new("/no/such/file"), 1 << 30, "a weights file").err().unwrap();
        assert!(e.starts_with("cannot open a weights file: "), "{e}");
        let p = std::env::temp_dir().join(format!("resnetc-files-{}", std::process::id()));
        std::fs::write(&p, [0u8; 2000]).unwrap();
        let e = open_regular(&p, 1024, "an input batch").err().unwrap();
        assert_eq!(e, "the file is 2,000 bytes; an input batch may be at most 1,024 bytes");
        assert_eq!(open_regular(&p, 2000, "an input batch").unwrap().1, 2000);
        let _ = std::fs::remove_file(&p);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let p = std::env::temp_dir().join(format!("resnetc-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&p, 1 << 30, "a weights file").err().unwrap();
        assert_eq!(e, "a weights file must be a regular file, found a FIFO (named pipe)");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn byte_counts() {
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(16 << 20), "16 MiB");
        assert_eq!(human_bytes(102_121_888), "102.1 MB");
        assert_eq!(human_bytes(4_825_088), "4.8 MB");
        assert_eq!(human_bytes(4_096), "4,096 bytes");
    }
}

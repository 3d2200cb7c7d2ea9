//! File names as the command line prints them, byte for byte. A name that is not UTF-8 is written
//! in JSON as Python's `os.fsdecode` gives it: each byte that is not part of valid UTF-8 becomes
//! the lone surrogate U+DC80..U+DCFF (`\udcXX`), so `os.fsencode(json.loads(doc)['a'])` gives
//! the file's bytes back; plain-text output writes the bytes themselves.
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `path` as a JSON string literal (quotes included).
pub fn json(path: &Path) -> String {
    let mut out = String::from("\"");
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        let valid = serde_json::to_string(chunk.valid()).unwrap_or_else(|_| "\"\"".into());
        out.push_str(&valid[1..valid.len() - 1]); // without its quotes
        for b in chunk.invalid() {
            let _ = write!(out, "\\u{:04x}", 0xdc00 + *b as u32);
        }
    }
    out.push('"');
    out
}

/// `path`'s bytes, as given to the program.
pub fn bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// `path` as UTF-8, or an error saying where it is needed.
pub fn utf8<'a>(path: &'a Path, needed_by: &str) -> crate::Result<&'a str> {
    path.to_str().ok_or_else(|| {
        crate::Error::Value(format!(
            "{}: the file name is not UTF-8, and {needed_by} (rename the file)",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn utf8_names_are_ordinary_json() {
        let p = Path::new("a \"b\"\\\u{e9}\n.png\"");
        let back: String = serde_json::from_str(&json(p)).unwrap();
        assert_eq!(back, p.to_str().unwrap());
    }

    #[test]
    fn other_bytes_are_pythons_surrogate_escapes() {
        let p = Path::new(OsStr::from_bytes(b"x\xff\xc3y\xc3\xa9.png"));
        assert_eq!(json(p), "\"x\\udcff\\udcc3y\u{e9}.png\"");
    }
}

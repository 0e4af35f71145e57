//! Golden files: `BLESS=1` writes the new text; otherwise the text must equal the file.

use std::path::Path;

/// What [`golden`] does with the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Compare only.
    Compare,
    /// Write the new text first (then the comparison holds).
    Bless,
}

/// Compares `actual` with the golden file at `path`. With `BLESS` set in the environment it
/// first writes `actual` there (creating the directory), so the comparison then holds and the
/// change shows up in `git diff`.
///
/// # Panics
/// When the file is missing (run with `BLESS=1` to create it) or differs from `actual`.
#[track_caller]
pub fn golden(path: impl AsRef<Path>, actual: &str) {
    let mode = if std::env::var_os("BLESS").is_some() {
        Mode::Bless
    } else {
        Mode::Compare
    };
    check(path.as_ref(), actual, mode);
}

#[track_caller]
fn check(path: &Path, actual: &str, mode: Mode) {
    if mode == Mode::Bless {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        std::fs::write(path, actual)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "golden {}: {e} (run with BLESS=1 to create it)",
            path.display()
        )
    });
    assert!(
        actual == expected,
        "golden {} differs (BLESS=1 to update)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_fails_on_a_difference_and_bless_writes_the_new_text() {
        let dir =
            std::env::temp_dir().join(format!("vipmesh-testkit-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.txt");
        std::fs::write(&path, "one\n").unwrap();
        check(&path, "one\n", Mode::Compare);
        let differs = std::panic::catch_unwind(|| check(&path, "two\n", Mode::Compare));
        check(&path, "two\n", Mode::Bless);
        let written = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(differs.is_err());
        assert_eq!(written, "two\n");
    }
}

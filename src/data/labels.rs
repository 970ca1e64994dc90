//! Class names: the 1000 ImageNet categories built in, or a label file (one name per line).
//!
//! `assets/imagenet_classes.txt` holds torchvision's category names
//! (`MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]`), written by
//! `tools/fixtures/make_predict_fixtures.py`. They are the first synonym of each line of OpenCV's
//! `classification_classes_ILSVRC2012.txt` except 134 "crane bird" and 639 "maillot tank suit",
//! where torchvision disambiguates a name that occurs twice ("crane", "maillot").

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// torchvision's ImageNet-1k category names in class-index order.
pub const IMAGENET_CLASSES: &str = include_str!("../../assets/imagenet_classes.txt");

/// The names of a model's classes, and where they came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    names: Vec<String>,
    source: Option<PathBuf>,
}

impl Labels {
    /// The built-in ImageNet-1k names.
    pub fn imagenet() -> Self {
        Self { names: parse(IMAGENET_CLASSES).expect("the built-in label file is well formed"), source: None }
    }

    /// Reads a label file: one name per line, UTF-8; a final newline and `\r\n` line ends are
    /// fine, an empty line is an error (it would shift every later class).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { path: path.to_path_buf() },
            _ => Error::file(path, format!("cannot read the label file: {e}")),
        })?;
        let names =
            parse(&text).map_err(|line| Error::file(path, format!("line {line} of the label file is empty")))?;
        if names.is_empty() {
            return Err(Error::file(path, "the label file is empty"));
        }
        Ok(Self { names, source: Some(path.to_path_buf()) })
    }

    /// The labels for a model with `num_classes` outputs: `file` when given (its length must be
    /// `num_classes`), else the ImageNet names for a 1000-class model, else none.
    pub fn for_model(num_classes: usize, file: Option<&Path>) -> Result<Option<Self>> {
        let labels = match file {
            Some(path) => Self::from_file(path)?,
            None if num_classes == 1000 => Self::imagenet(),
            None => return Ok(None),
        };
        labels.check_len(num_classes)?;
        Ok(Some(labels))
    }

    /// An error naming the file and both counts unless there is one label per class.
    pub fn check_len(&self, num_classes: usize) -> Result<()> {
        if self.names.len() == num_classes {
            return Ok(());
        }
        Err(Error::LabelCount {
            path: self.source.clone().unwrap_or_else(|| PathBuf::from("assets/imagenet_classes.txt (built in)")),
            found: self.names.len(),
            expected: num_classes,
        })
    }

    pub fn get(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The class index of a name, if present.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Splits into lines; `Err(line number)` for an empty line before the end.
fn parse(text: &str) -> std::result::Result<Vec<String>, usize> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut names: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').trim().to_string()).collect();
    // Trailing blank lines are formatting, not classes.
    while names.last().is_some_and(|n| n.is_empty()) {
        names.pop();
    }
    match names.iter().position(|n| n.is_empty()) {
        Some(i) => Err(i + 1),
        None => Ok(names),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_are_torchvisions() {
        let labels = Labels::imagenet();
        assert_eq!(labels.len(), 1000);
        assert_eq!(labels.get(0), Some("tench"));
        assert_eq!(labels.get(285), Some("Egyptian cat"));
        assert_eq!(labels.get(652), Some("military uniform"));
        assert_eq!(labels.get(134), Some("crane bird"));
        assert_eq!(labels.get(517), Some("crane"));
        assert_eq!(labels.get(999), Some("toilet tissue"));
    }

    #[test]
    fn parse_rejects_inner_blank_lines() {
        assert_eq!(parse("a\r\nb\n\n"), Ok(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(parse("a\n\nb\n"), Err(2));
    }
}

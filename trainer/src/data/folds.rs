//! Fold rules: which classes a fold tests; the others are its training classes.
//! All functions take the class ids ascending and return `(train, test)`, both ascending, and
//! fail when the fold is out of range or would test no class.

use super::{check_fold, ClassId};
use crate::{Error, Result};

/// PASCAL-5i: `n_folds` contiguous blocks; with 20 classes and 4 folds, fold i tests 5i+1..=5i+5.
pub fn contiguous(
    ids: &[ClassId],
    fold: usize,
    n_folds: usize,
) -> Result<(Vec<ClassId>, Vec<ClassId>)> {
    check_fold(fold, n_folds)?;
    let (lo, hi) = (fold * ids.len() / n_folds, (fold + 1) * ids.len() / n_folds);
    split(ids, fold, n_folds, |i, _| (lo..hi).contains(&i))
}

/// COCO-20i: interleaved; the class at 0-based position j is tested by fold `j % n_folds` (with
/// 80 classes numbered 1..=80 and 4 folds: fold i tests {4k + i + 1}).
pub fn interleaved(
    ids: &[ClassId],
    fold: usize,
    n_folds: usize,
) -> Result<(Vec<ClassId>, Vec<ClassId>)> {
    check_fold(fold, n_folds)?;
    split(ids, fold, n_folds, |i, _| i % n_folds == fold)
}

/// MSRC-v2: fold i tests the classes with `id % n_folds == i`; the `excluded` classes are in
/// neither list.
pub fn by_id_modulo(
    ids: &[ClassId],
    excluded: &[ClassId],
    fold: usize,
    n_folds: usize,
) -> Result<(Vec<ClassId>, Vec<ClassId>)> {
    check_fold(fold, n_folds)?;
    let kept: Vec<ClassId> = ids
        .iter()
        .copied()
        .filter(|c| !excluded.contains(c))
        .collect();
    split(&kept, fold, n_folds, |_, c| c % n_folds == fold)
}

fn split(
    ids: &[ClassId],
    fold: usize,
    n_folds: usize,
    is_test: impl Fn(usize, ClassId) -> bool,
) -> Result<(Vec<ClassId>, Vec<ClassId>)> {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, &c) in ids.iter().enumerate() {
        if is_test(i, c) {
            test.push(c);
        } else {
            train.push(c);
        }
    }
    if test.is_empty() {
        return Err(Error::Input(format!(
            "fold {fold} of {n_folds} has no test class ({} classes)",
            ids.len()
        )));
    }
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() -> Result<()> {
        let pascal: Vec<ClassId> = (1..=20).collect();
        assert_eq!(contiguous(&pascal, 0, 4)?.1, [1, 2, 3, 4, 5]);
        assert_eq!(contiguous(&pascal, 3, 4)?.1, [16, 17, 18, 19, 20]);
        assert_eq!(contiguous(&pascal, 1, 4)?.0.len(), 15);
        let coco: Vec<ClassId> = (1..=80).collect();
        let (train, test) = interleaved(&coco, 1, 4)?;
        assert_eq!(test, (0..20).map(|k| 4 * k + 2).collect::<Vec<_>>());
        assert_eq!(train.len(), 60);
        let msrc: Vec<ClassId> = (0..23).collect();
        let (train, test) = by_id_modulo(&msrc, &[4], 0, 4)?;
        assert_eq!(test, [0, 8, 12, 16, 20]);
        assert!(!train.contains(&4) && train.len() == 17);
        assert!(contiguous(&pascal, 4, 4).is_err());
        assert!(interleaved(&[1, 2], 2, 3).is_err(), "empty test fold");
        Ok(())
    }
}

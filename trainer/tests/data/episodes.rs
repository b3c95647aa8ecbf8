//! Episodes on the PASCAL fixture: labels 0/1/255, distinct supports that are never the query,
//! and a reproducible test-episode list.

use std::collections::BTreeSet;

use mce_train::data::{load_episode, test_episodes, EpisodeSampler, FewShotDataset, Pascal5i};
use mce_train::Result;

use super::fixtures::{self, area, BIG};
use super::formats::pascal;

fn open() -> Result<(tempfile::TempDir, Pascal5i)> {
    let dir = fixtures::tempdir();
    pascal(dir.path());
    let ds = Pascal5i::open(dir.path(), Some(&dir.path().join("train.txt")))?;
    Ok((dir, ds))
}

#[test]
fn supports_are_distinct_and_never_the_query() -> Result<()> {
    let (_dir, ds) = open()?;
    let pool = ds.test_pool(0, 4)?; // c1: 4 images, c2: 2, c3: 1
    let mut sampler = EpisodeSampler::new(3);
    let mut classes = BTreeSet::new();
    for shots in 1..=3 {
        for _ in 0..100 {
            let e = sampler.sample(&pool, shots)?;
            classes.insert(e.class);
            assert_eq!(e.supports.len(), shots);
            let mut images: Vec<usize> = e.supports.iter().map(|s| s.image).collect();
            assert!(
                !images.contains(&e.query.image),
                "query among supports: {e:?}"
            );
            images.push(e.query.image);
            images.sort_unstable();
            images.dedup();
            assert_eq!(images.len(), shots + 1, "{e:?}");
            assert!(images.iter().all(|i| pool.images(e.class).contains(i)));
            assert!(e.supports.iter().all(|s| s.class == e.class) && e.query.class == e.class);
        }
    }
    assert_eq!(
        classes,
        BTreeSet::from([1, 2]),
        "class 3 has one image only"
    );
    assert!(sampler.sample(&pool, 4).is_err(), "no class has 5 images");
    Ok(())
}

#[test]
fn episode_labels_are_0_1_255() -> Result<()> {
    let (_dir, ds) = open()?;
    for e in test_episodes(&ds, 0, 4, 1, 30, 11)? {
        let loaded = load_episode(&ds, &e)?;
        for s in std::iter::once(&loaded.query).chain(&loaded.supports) {
            assert!(s.mask.data.iter().all(|v| [0, 1, 255].contains(v)));
            assert!(s.mask.foreground_count() as u64 >= 2048);
            assert_eq!((s.image.width(), s.image.height()), (96, 64));
        }
    }
    // p4 (index 3) for class 1: 2304 ones, the 255 band kept, the rest 0.
    let m = ds
        .sample(mce_train::SampleRef { image: 3, class: 1 })?
        .load_mask()?;
    let n = |v: u8| m.data.iter().filter(|&&x| x == v).count() as u64;
    assert_eq!(
        (n(1), n(255), n(0)),
        (area(BIG), 96 * 4, 6144 - area(BIG) - 96 * 4)
    );
    // p8 (index 7) for class 2: its class-1 pixels are plain background.
    let m = ds
        .sample(mce_train::SampleRef { image: 7, class: 2 })?
        .load_mask()?;
    assert_eq!(
        (
            m.foreground_count(),
            m.data.iter().filter(|&&x| x == 255).count()
        ),
        (2304, 0)
    );
    assert_eq!(m.data[10], 1);
    assert_eq!(m.data[60], 0, "class 1 pixel -> 0");
    Ok(())
}

#[test]
fn test_episode_list_is_reproducible() -> Result<()> {
    let (_dir, ds) = open()?;
    let a = test_episodes(&ds, 0, 4, 1, 50, 2024)?;
    let b = test_episodes(&ds, 0, 4, 1, 50, 2024)?;
    assert_eq!(a, b);
    assert_eq!(
        test_episodes(&ds, 0, 4, 1, 20, 2024)?,
        a[..20],
        "prefix of a longer list"
    );
    let c = test_episodes(&ds, 0, 4, 1, 50, 2025)?;
    assert_ne!(a, c, "another seed, another list");
    // A freshly opened copy of the dataset gives the same list (no hidden state).
    let (_dir2, again) = open()?;
    assert_eq!(test_episodes(&again, 0, 4, 1, 50, 2024)?, a);
    assert!(test_episodes(&ds, 0, 4, 0, 5, 1).is_err(), "zero shots");
    Ok(())
}

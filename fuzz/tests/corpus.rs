//! The short version of the fuzz runs, in CI: every input of `fuzz/corpus/<target>/` (grown by
//! the coverage-guided runs of `scripts/fuzz.sh`) and of `fuzz/regressions/<target>/` (inputs
//! that once failed), then seeded mutations of them. A failure names the target, the file or
//! the seed and mutation index, and writes the input to `target/fuzz-failures/`.

#![allow(clippy::expect_used, clippy::panic)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use magnetar_fuzz::{TARGETS, Target};

/// Mutations per target per run (each of a random corpus input).
const MUTATIONS: usize = 3000;
const SEED: u64 = 0x6d61_676e_6574_6172;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = read
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let data = std::fs::read(e.path()).expect("a corpus file reads");
            (e.path().display().to_string(), data)
        })
        .collect();
    out.sort();
    out
}

fn run(name: &str, target: Target, label: &str, data: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| target(data))).is_err() {
        let dir = root().join("../target/fuzz-failures").join(name);
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{:016x}", fxhash(data)));
        let _ = std::fs::write(&file, data);
        panic!(
            "fuzz target {name} failed on {label}; input written to {} (replay: \
             scripts/fuzz.sh {name} {})",
            file.display(),
            file.display()
        );
    }
}

fn fxhash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: enough to pick mutations reproducibly.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 => out.truncate(rng.below(out.len() + 1)),
            3 => {
                let at = rng.below(out.len() + 1);
                let n = rng.below(16) + 1;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(at..at, bytes);
            }
            4 if !other.is_empty() => {
                let at = rng.below(out.len() + 1);
                let from = rng.below(other.len());
                let to = from + rng.below(other.len() - from) + 1;
                out.splice(at..at, other[from..to].iter().copied());
            }
            5 if out.len() >= 4 => {
                // A length field set to something large.
                let at = rng.below(out.len() - 3);
                out[at..at + 4].copy_from_slice(&(rng.next() as u32 | 0x7000_0000).to_be_bytes());
            }
            _ => {
                let at = rng.below(out.len() + 1);
                out.insert(at, rng.next() as u8);
            }
        }
    }
    out
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in TARGETS {
        let corpus = inputs(&root().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} is empty: run scripts/fuzz.sh {name} to grow it"
        );
    }
}

#[test]
fn corpus_and_regressions_replay_cleanly() {
    for (name, target) in TARGETS {
        for dir in ["corpus", "regressions"] {
            for (path, data) in inputs(&root().join(dir).join(name)) {
                run(name, *target, &path, &data);
            }
        }
    }
}

#[test]
fn seeded_mutations_of_the_corpus_run_cleanly() {
    for (index, (name, target)) in TARGETS.iter().enumerate() {
        let corpus = inputs(&root().join("corpus").join(name));
        if corpus.is_empty() {
            continue;
        }
        let seed = SEED ^ index as u64;
        let mut rng = Rng(seed);
        for i in 0..MUTATIONS {
            let (_, input) = &corpus[rng.below(corpus.len())];
            let (_, other) = &corpus[rng.below(corpus.len())];
            let data = mutate(&mut rng, input, other);
            run(
                name,
                *target,
                &format!("mutation {i} of seed {seed:#x}"),
                &data,
            );
        }
    }
}

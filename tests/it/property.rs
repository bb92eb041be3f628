//! Property: random sequences of commits (add, modify, delete, rename, force-push to an older commit,
//! default branch switched) pushed to a real server; after every sync the catalog equals the tree of the
//! remote's default branch, computed independently with the git CLI. Seeded, so a failure replays.

use std::path::{Path, PathBuf};

use crate::git_http::Auth;
use crate::support::*;

/// xorshift64*: enough randomness for choosing operations, and reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn models_in(work: &Path) -> Vec<String> {
    let out = git(work, &["ls-files", "*.json"]);
    out.lines().map(str::to_string).collect()
}

fn write_model(work: &Path, path: &str, source: &Path, tag: u64) {
    let text = std::fs::read_to_string(source).unwrap();
    let text = text.replacen("\"modelName\": \"", &format!("\"modelName\": \"v{tag} "), 1);
    let p = work.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn random_histories_are_mirrored_exactly() {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(fixtures().join("models/books"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.metadata().map(|m| m.len() < 60_000).unwrap_or(false))
        .collect();
    sources.sort();
    assert!(sources.len() >= 5, "fixture models");
    for seed in [0x9E37_79B9_7F4A_7C15u64, 42, 7_777_777] {
        let env = Env::new(Auth::None);
        let (bare, work) = env.new_repo("p/r.git");
        env.write_config(&format!(
            "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"p/r.git\"]\n",
            env.server.url()
        ));
        let mut rng = Rng(seed);
        let mut branch = "main".to_string();
        // Commits the default branch has pointed at, to force-push back to.
        let mut pushed: Vec<String> = Vec::new();
        let mut log = Vec::new();
        for step in 0..24u64 {
            let files = models_in(&work);
            let op = if files.is_empty() { 0 } else { rng.below(7) };
            let what = match op {
                0 | 1 => {
                    let path = format!("d{}/m{step}.hck.json", rng.below(3));
                    write_model(&work, &path, &sources[rng.below(sources.len())], step);
                    format!("add {path}")
                }
                2 => {
                    let path = files[rng.below(files.len())].clone();
                    write_model(&work, &path, &sources[rng.below(sources.len())], step);
                    format!("modify {path}")
                }
                3 => {
                    let path = files[rng.below(files.len())].clone();
                    git(&work, &["rm", "-q", &path]);
                    format!("delete {path}")
                }
                4 => {
                    let from = files[rng.below(files.len())].clone();
                    let to = format!("renamed/r{step}.hck.json");
                    std::fs::create_dir_all(work.join("renamed")).unwrap();
                    git(&work, &["mv", &from, &to]);
                    format!("rename {from} -> {to}")
                }
                5 if pushed.len() > 1 => {
                    let back = pushed[rng.below(pushed.len() - 1)].clone();
                    git(&work, &["reset", "-q", "--hard", &back]);
                    git(
                        &work,
                        &["push", "-q", "-f", "origin", &format!("HEAD:{branch}")],
                    );
                    format!("force-push {branch} to {back}")
                }
                _ => {
                    // The default branch switches to a new branch made from an older commit.
                    let base = pushed.get(rng.below(pushed.len().max(1))).cloned();
                    if let Some(base) = base {
                        git(&work, &["reset", "-q", "--hard", &base]);
                    }
                    branch = format!("b{step}");
                    write_model(&work, &format!("on-{branch}.hck.json"), &sources[0], step);
                    git(&work, &["add", "-A"]);
                    git(&work, &["commit", "-q", "-m", &format!("on {branch}")]);
                    git(&work, &["push", "-q", "origin", &format!("HEAD:{branch}")]);
                    git(
                        &bare,
                        &["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")],
                    );
                    format!("default branch -> {branch}")
                }
            };
            if !what.starts_with("force-push") && !what.starts_with("default branch") {
                git(&work, &["add", "-A"]);
                git(&work, &["commit", "-q", "--allow-empty", "-m", &what]);
                git(
                    &work,
                    &["push", "-q", "-f", "origin", &format!("HEAD:{branch}")],
                );
            }
            log.push(what);
            let head = git(&bare, &["rev-parse", "HEAD"]).trim().to_string();
            pushed.push(head.clone());
            let out = env.run(&["sync"]);
            assert_eq!(out.code, 0, "seed {seed}, steps {log:?}: {out:?}");
            let db = env.db();
            assert_eq!(
                processed_commit(&db, "g/p/r").as_deref(),
                Some(head.as_str()),
                "seed {seed}, steps {log:?}"
            );
            // Shown only when the next line fails: the steps that led here.
            eprintln!("seed {seed}: {log:?}");
            assert_catalog_is(&bare, &db, "g/p/r", &head, 64 << 20);
        }
    }
}

//! The loader is fed what a pods directory can hold: arbitrary bytes, and real
//! manifests with bytes flipped, cut or spliced. It must never panic, and a
//! pod it returns must be one whose numbers are consistent.

use proptest::prelude::*;
use specs::{load, NodeInfo};

fn examples() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out = Vec::new();
    for sub in [dir.clone(), dir.join("invalid")] {
        for e in std::fs::read_dir(sub).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push(std::fs::read(p).unwrap());
            }
        }
    }
    out.sort();
    out
}

fn check(bytes: &[u8]) {
    let r = load("fuzz.yaml", bytes, &NodeInfo::default());
    for p in &r.pods {
        for c in p.all_containers() {
            let res = &c.resources;
            assert!(res.cpu_shares >= 2);
            if let (Some(l), r) = (res.cpu_limit_milli, res.cpu_request_milli) {
                assert!(r <= l, "request above limit in {}", p.name);
            }
            assert!((-1000..=1000).contains(&res.oom_score_adj));
        }
        assert_eq!(p.hash.len(), 64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn mutated_examples_never_panic(
        which in 0usize..64,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let all = examples();
        let mut bytes = all[which % all.len()].clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        check(&bytes);
        check(&bytes[..cut.index(bytes.len() + 1)]);
    }

    #[test]
    fn yaml_shaped_noise_never_panics(
        lines in proptest::collection::vec("( {0,6})(-|[a-zA-Z]{1,12}:)( [a-zA-Z0-9{}\\[\\],.:\"'-]{0,16})?", 1..30)
    ) {
        check(lines.join("\n").as_bytes());
    }
}

#[test]
fn deeply_nested_and_aliased_input_is_refused_without_exhausting_memory() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    check(deep.as_bytes());
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        laughs.push_str(&format!(
            "{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
            (b'a' + i) as char,
            (b'a' + i) as char,
            p = (b'a' + i - 1) as char
        ));
    }
    let r = load("laughs.yaml", laughs.as_bytes(), &NodeInfo::default());
    assert!(r.has_errors());
}

#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz) of every parser of outside input.
#
#   scripts/fuzz.sh                         # every target, 10 million inputs each
#   scripts/fuzz.sh TARGET [RUNS]           # one target (RUNS default 10000000)
#   scripts/fuzz.sh TARGET FILE             # replay one input (a crash, a regression)
#   scripts/fuzz.sh --list
#
# Targets are the functions of fuzz/src/lib.rs; the harness is fuzz/libfuzzer. New inputs that
# reach new code are added to fuzz/corpus/TARGET (commit them after `scripts/fuzz.sh --cmin`
# has minimized the corpus); a crash is written to fuzz/libfuzzer/artifacts/TARGET/ — turn it
# into a regression by copying it to fuzz/regressions/TARGET/ (the CI replay runs it).
# Limits: 10 s per input (a hang), 2 GiB RSS, 256 MiB in one allocation (unbounded growth).
#
# Needs cargo-fuzz (installed here from crates.io when missing) and a C++ compiler. The stable
# toolchain is used with RUSTC_BOOTSTRAP=1 for the sanitizer-coverage flags; no sanitizer
# (-s none): Rust's own checks catch what a sanitizer would in this safe code.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(pulsar_frame bookie_rpc journal entry_log names admin schema)
FUZZ_DIR=fuzz/libfuzzer
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_FUZZ:-$PWD/target/fuzz}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

run() {
    local target=$1 runs=$2
    mkdir -p "fuzz/corpus/$target"
    echo "== $target: $runs inputs" >&2
    cargo fuzz run --fuzz-dir "$FUZZ_DIR" -s none --release "$target" "fuzz/corpus/$target" -- \
        -runs="$runs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 -max_len=65536 \
        -print_final_stats=1
}

case "${1:-}" in
--list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
--cmin)
    for t in "${TARGETS[@]}"; do
        cargo fuzz cmin --fuzz-dir "$FUZZ_DIR" -s none --release "$t" "fuzz/corpus/$t"
    done
    ;;
"")
    for t in "${TARGETS[@]}"; do run "$t" 10000000; done
    ;;
*)
    if [[ -f "${2:-}" ]]; then
        cargo fuzz run --fuzz-dir "$FUZZ_DIR" -s none --release "$1" "$2"
    else
        run "$1" "${2:-10000000}"
    fi
    ;;
esac

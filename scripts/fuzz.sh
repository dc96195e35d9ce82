#!/usr/bin/env bash
# Run every fuzz target (tests/fuzz) for a bounded time and print what each did.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --version 0.13.2 --locked`) and the nightly
# toolchain when the machine has one; otherwise the stable compiler with RUSTC_BOOTSTRAP=1
# (the sanitizer and coverage flags are unstable options). Each run starts from the seeds
# in tests/fuzz/seeds/<target> and works on a scratch copy, so the repository stays clean.
# A crash, leak, timeout or out-of-memory fails the script; the input is kept under
# tests/fuzz/artifacts/<target>/ and shown here, to be turned into a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dicom_header dimse_messages qido_query stow_multipart)

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
"${fuzz[@]}" build -O --fuzz-dir tests/fuzz
bin=tests/fuzz/target/x86_64-unknown-linux-gnu/release

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary=()
status=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "tests/fuzz/artifacts/$t"
    # The HTTP targets run a whole server in the process: leak checks would scan its
    # heap after every input (10x slower) and report its caches.
    leaks=1
    case $t in qido_query | stow_multipart) leaks=0 ;; esac
    echo "== fuzzing $t for ${seconds}s"
    if ! "$bin/$t" "$work/$t" "tests/fuzz/seeds/$t" \
        -max_total_time="$seconds" -max_len=16384 -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=256 -detect_leaks=$leaks \
        -print_final_stats=1 -artifact_prefix="tests/fuzz/artifacts/$t/" \
        >"$work/$t.log" 2>&1; then
        status=1
        grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse)' "$work/$t.log" | tail -60
        for f in "tests/fuzz/artifacts/$t"/*; do
            [ -f "$f" ] && { echo "-- input $f:"; xxd "$f" | head -20; }
        done
    fi
    runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$work/$t.log")
    cov=$(grep -oE 'cov: [0-9]+' "$work/$t.log" | tail -1 | cut -d' ' -f2)
    corpus=$(ls "$work/$t" | wc -l)
    summary+=("$(printf '%-16s %10s executions  %6s coverage points  %5s corpus entries' \
        "$t" "${runs:-?}" "${cov:-?}" "$corpus")")
done
echo "== fuzzing summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit $status

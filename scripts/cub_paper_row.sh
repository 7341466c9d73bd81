#!/usr/bin/env bash
# The paper's CUB row end to end: captions cached, the DAMSM pretrained to its epoch-200 snapshot,
# AttnGAN2 trained against it (600 epochs), evaluated by the protocol of docs/design.md §5 on 30,000
# generated images. Days on one GPU; every step resumes where it stopped when the script is run again.
#
# The files it expects (nothing is downloaded; set the variables to where yours are):
#   DATA      CUB-200-2011 in the release's layout: CUB_200_2011/{images/,images.txt,bounding_boxes.txt},
#             text/<key>.txt (the 10 captions per image of Reed et al.), {train,test}/filenames.pickle,
#             optional {train,test}/class_info.pickle and captions.pickle (its vocabulary is reused)
#   INCEPTION torchvision's ImageNet Inception-v3 state_dict (inception_v3_google-0cc3c7bd.pth): the
#             DAMSM's frozen image backbone
#   FIDELITY  torch-fidelity's TF-Inception weights (weights-inception-2015-12-05-6726825d.pth), for IS
#             and FID; leave it empty to report R-precision only
#   RUNS      where the runs and the report go
# Extra arguments go to both training commands (e.g. --amp bf16 --compile on a GPU).
set -euo pipefail
DATA=${DATA:-data/birds}
INCEPTION=${INCEPTION:-inception_v3_google-0cc3c7bd.pth}
FIDELITY=${FIDELITY-weights-inception-2015-12-05-6726825d.pth}  # set but empty: no IS/FID
RUNS=${RUNS:-runs}

for f in "$DATA/CUB_200_2011/images.txt" "$DATA/train/filenames.pickle" "$DATA/test/filenames.pickle" "$INCEPTION" \
    ${FIDELITY:+"$FIDELITY"}; do
  [ -e "$f" ] || { echo "cub_paper_row.sh: missing $f (see the list of files at the top of this script;" \
    "FIDELITY= reports R-precision only)" >&2; exit 2; }
done
resume() { [ -e "$1/latest.pt" ] && echo "--resume $1/latest.pt"; }

attngan-fast data prepare --root "$DATA"
# The release trained its GAN against the DAMSM of epoch 200: stop there (the preset keeps that snapshot).
attngan-fast pretrain-damsm --config bird --data "$DATA" --out "$RUNS/damsm-bird" --inception-weights "$INCEPTION" \
  --set damsm.epochs=200 $(resume "$RUNS/damsm-bird") "$@"
attngan-fast train --config attngan2 --data "$DATA" --out "$RUNS/attngan2-bird" \
  --damsm "$RUNS/damsm-bird/damsm_epoch0200.pt" $(resume "$RUNS/attngan2-bird") "$@"
report="$RUNS/attngan2-bird-report.json"
if [ -e "$report" ]; then  # written once, complete (atomically): a run of the script after it changes nothing
  echo "report: $report (made before: remove it to evaluate again)"
  exit 0
fi
fidelity=()
[ -n "$FIDELITY" ] && fidelity=(--inception-weights "$FIDELITY")
attngan-fast evaluate --checkpoint "$RUNS/attngan2-bird/latest.pt" --damsm "$RUNS/damsm-bird/damsm_epoch0200.pt" \
  --data "$DATA" --n-images 30000 ${fidelity[@]+"${fidelity[@]}"} --discard-images --out "$report"
echo "report: $report"

#!/usr/bin/env bash
# A real ComfyUI in a virtual environment of its own, for the integration tests (`make integration` runs this):
#
#   scripts/setup_comfyui.sh SOURCE DEST
#
# SOURCE: a ComfyUI source tarball (e.g. the v0.3.64 release's .tar.gz) or an unpacked ComfyUI folder.
# DEST receives ComfyUI/ (the unpacked source, or a link to the folder, which is never written to) and venv/:
# torch ($COMFYUI_TORCH), ComfyUI's requirements, this pack's requirements and test tools, and the integration
# tools (tests/integration/requirements.txt: pytest, playwright, comfy-cli). Only the package index is used;
# the browser for the frontend test is the system's Chromium (Debian: apt-get install chromium).
set -euo pipefail

if [ $# -ne 2 ]; then
    sed -n '2,10p' "$0" >&2
    exit 2
fi
source=$1
repo=$(cd "$(dirname "$0")/.." && pwd)
torch=${COMFYUI_TORCH:-torch==2.14.1 torchvision==0.29.1}
mkdir -p "$2"
dest=$(cd "$2" && pwd)

rm -rf "$dest/ComfyUI" "$dest/unpacked"
if [ -d "$source" ]; then
    ln -s "$(cd "$source" && pwd)" "$dest/ComfyUI"
elif [ -f "$source" ]; then
    mkdir "$dest/unpacked"
    tar xzf "$source" -C "$dest/unpacked"
    main=$(find "$dest/unpacked" -maxdepth 2 -name main.py -print -quit)  # ComfyUI/ or ComfyUI-<version>/
    if [ -z "$main" ]; then
        echo "$source: no ComfyUI main.py in the first two levels of the archive" >&2
        exit 1
    fi
    mv "$(dirname "$main")" "$dest/ComfyUI"
    rm -rf "$dest/unpacked"
else
    echo "$source: neither a ComfyUI tarball nor a ComfyUI folder" >&2
    exit 1
fi
test -f "$dest/ComfyUI/requirements.txt" || { echo "$dest/ComfyUI has no requirements.txt" >&2; exit 1; }

rm -rf "$dest/venv"
python3 -m venv "$dest/venv"
pip=("$dest/venv/bin/python" -m pip install -q)
# shellcheck disable=SC2086  # $torch is a list of requirements
"${pip[@]}" $torch
# torch stays the build installed above: ComfyUI's list names torch and torchvision unpinned, and torchaudio,
# which it can do without and whose releases each want their own torch.
"$dest/venv/bin/python" -m pip freeze | grep -iE '^(torch|torchvision)==' >"$dest/torch-constraints.txt"
grep -viE '^[[:space:]]*torch(vision|audio)?[[:space:]]*$' "$dest/ComfyUI/requirements.txt" >"$dest/comfyui-requirements.txt"
"${pip[@]}" -c "$dest/torch-constraints.txt" -r "$dest/comfyui-requirements.txt" -r "$repo/requirements.txt" \
    -r "$repo/requirements-test.txt" -r "$repo/tests/integration/requirements.txt"
echo "ComfyUI ready: COMFYUI_DIR=$dest/ComfyUI with $dest/venv/bin/python"

#!/usr/bin/env bash
# Run HERE (a machine with PyPI access), once, before a device session that
# should run a Ray sweep on the GPU (bench/gpu_sweep.sh).
#
# The device has no network and no Ray; the Ray wheel (79 MB) is over the 64 MiB
# a device call may carry. This builds, under the git-ignored .whl/:
#   .whl/ray-site-cpXY.tar.xz   Ray's package for CPython X.Y, without its Java
#                               jars, the dashboard's web client and RLlib (none of
#                               which a sweep imports; fastconvex starts Ray with
#                               include_dashboard=False), xz-compressed (~29 MB)
#   .whl/deps-cpXY/*.whl        Ray's requirements missing from the device image
#                               (jsonschema and its own requirements)
# Then call the device with carry [".whl"] and `bash bench/gpu_sweep.sh`.
#   PYVER=3.12 (default: the device image's Python), RAY_VERSION (default: the
#   version installed here, else 2.60.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
TAG="cp${PYVER/./}"
RAY_VERSION="${RAY_VERSION:-$(python3 -c 'import importlib.metadata as m; print(m.version("ray"))' 2>/dev/null || echo 2.60.0)}"
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
GET=(python3 -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp "${PLAT[@]}")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${GET[@]}" --no-deps -d "$work/wheel" "ray==$RAY_VERSION"
mkdir -p "$work/site" ".whl/deps-$TAG"
(cd "$work/site" && python3 -m zipfile -e "$work"/wheel/ray-*.whl .)
chmod +x "$work"/site/ray/core/src/ray/raylet/raylet "$work"/site/ray/core/src/ray/gcs/gcs_server
rm -rf "$work"/site/ray/jars "$work"/site/ray/dashboard/client/build "$work"/site/ray/rllib
tar -C "$work/site" -cJf ".whl/ray-site-$TAG.tar.xz.part" .
mv ".whl/ray-site-$TAG.tar.xz.part" ".whl/ray-site-$TAG.tar.xz"
# jsonschema is the one requirement of Ray's core that the device image lacks
# (click, filelock, msgpack, packaging, protobuf, pyyaml, requests are there:
# /work/.library/device/KINDS.md); attrs and typing_extensions are there too.
rm -f ".whl/deps-$TAG"/*.whl
"${GET[@]}" -d "$work/deps" jsonschema
for w in "$work"/deps/*.whl; do
  case "${w##*/}" in attrs-*|typing_extensions-*) ;; *) cp "$w" ".whl/deps-$TAG/" ;; esac
done
du -sh ".whl/ray-site-$TAG.tar.xz" ".whl/deps-$TAG"
echo "prepare_device_ray: carry [\".whl\"] and run: bash bench/gpu_sweep.sh"

#!/bin/sh
# Best effort: give MLX a fast BLAS on Debian/Ubuntu (MLX's Linux wheel bundles the netlib reference BLAS).
# rvc_mlx loads it at import time; without it everything still runs, slower and a little less accurate.
[ "$(uname -s)" = Linux ] || exit 0
for f in /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 /usr/lib/*-linux-gnu/libopenblas.so.0; do
  [ -e "$f" ] && exit 0
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing OpenBLAS for MLX (apt-get install libopenblas0-pthread)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1
  } || echo "warning: could not install OpenBLAS; MLX will use its slow reference BLAS"
else
  echo "warning: OpenBLAS not found; as root run: apt-get install libopenblas0-pthread (MLX is slow without it)"
fi
exit 0

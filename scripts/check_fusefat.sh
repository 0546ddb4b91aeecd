#!/usr/bin/env bash
# Proves the case-insensitive filesystem the checkout collision test uses works here: a FAT32
# image made by mkfs.vfat, mounted by fusefat (a FUSE driver for FAT), answers a lookup of
# MODEL.BIN with model.bin. Needs root (or fusermount) and /dev/fuse.
set -euo pipefail
d=$(mktemp -d)
trap 'umount "$d/mnt" 2>/dev/null || true; rm -rf "$d"' EXIT
truncate -s 40M "$d/fat.img"
mkfs.vfat -F 32 "$d/fat.img" >/dev/null
mkdir "$d/mnt"
fusefat -o rw+ "$d/fat.img" "$d/mnt" >/dev/null 2>&1
echo probe > "$d/mnt/model.bin"
[[ $(cat "$d/mnt/MODEL.BIN") == probe ]]

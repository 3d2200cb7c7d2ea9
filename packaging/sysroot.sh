#!/usr/bin/env bash
# A glibc 2.31 sysroot (Debian 11's libc6, libc6-dev and kernel headers) for building manylinux_2_28
# wheels with the host's GCC: see "How the wheels are built" in the README. Usage: sysroot.sh DIR
# It uses apt with a private state folder (the machine's apt configuration is not touched) and
# makes the packages' absolute symlinks relative, so that the linker stays inside DIR.
set -euo pipefail
DIR=${1:?usage: sysroot.sh DIR}
if [[ -f $DIR/.complete ]]; then exit 0; fi
rm -rf "$DIR" && mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
APT=$DIR/.apt
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/debs"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat > "$APT/sources.list" <<LIST
deb [signed-by=$KEYRING] http://deb.debian.org/debian bullseye main
deb [signed-by=$KEYRING] http://deb.debian.org/debian-security bullseye-security main
LIST
touch "$APT/status"
opts=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/nonexistent
      -o "Dir::State=$APT" -o "Dir::State::Lists=$APT/lists" -o "Dir::State::status=$APT/status"
      -o "Dir::Cache=$APT" -o "Dir::Cache::Archives=$APT/archives" -o APT::Architecture=amd64
      -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
apt-get "${opts[@]}" -qq update
(cd "$APT/debs" && apt-get "${opts[@]}" -qq download libc6 libc6-dev linux-libc-dev libcrypt1 libcrypt-dev)
for deb in "$APT"/debs/*.deb; do dpkg-deb -x "$deb" "$DIR"; done
# Absolute symlinks (libc6-dev's libpthread.so -> /lib/...) would lead the linker to the host's glibc.
while IFS= read -r link; do
    target=$(readlink "$link")
    ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$DIR$target")" "$link"
done < <(find "$DIR" -type l -lname '/*')
[[ -e $DIR/lib/x86_64-linux-gnu/libc-2.31.so && -e $DIR/usr/lib/x86_64-linux-gnu/libc_nonshared.a ]] \
    || { echo "sysroot.sh: no glibc 2.31 in $DIR after unpacking $(ls "$APT/debs")" >&2; exit 1; }
rm -rf "$APT"
touch "$DIR/.complete"

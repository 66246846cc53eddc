# Sourced by image/build and image/test: installs the Debian 12 packages they need when missing.
# Bookworm's qemu-system-x86 removes a backports qemu-utils; qemu-utils is reinstalled after it.
image_deps() {
  local sudo="" missing=() p
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "image: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-utils >/dev/null
  fi
}

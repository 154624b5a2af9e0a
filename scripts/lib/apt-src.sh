# Sourced by podmirror's build scripts (.ci/apiserver.sh, scripts/cluster.sh, scripts/image.sh):
# apt sources derived from the machine's own apt configuration, never a fixed mirror host, so a
# machine behind its own mirror or proxy builds as it installs packages (scripts/lib/apt_sources.py).

PODMIRROR_APT_SRC_FILE=/etc/apt/sources.list.d/podmirror-src.sources

# podmirror_apt_sources deb|deb-src: the machine's enabled Debian sources (see apt_sources.py).
podmirror_apt_sources() {
  local APT_ETC APT_SOURCELIST APT_SOURCEPARTS APT_LISTS
  eval "$(apt-config shell APT_SOURCELIST Dir::Etc::sourcelist/f APT_SOURCEPARTS Dir::Etc::sourceparts/d \
                            APT_LISTS Dir::State::lists/d)"
  APT_SOURCELIST=$APT_SOURCELIST APT_SOURCEPARTS=$APT_SOURCEPARTS APT_LISTS=$APT_LISTS \
    /usr/bin/python3 "${BASH_SOURCE[0]%/*}/apt_sources.py" "$@"
}

# podmirror_ensure_deb_src: deb-src entries for the machine's Debian sources (for `apt-get source`),
# written once to $PODMIRROR_APT_SRC_FILE when the configuration has none; `apt-get update` when
# that file changes. Idempotent.
podmirror_ensure_deb_src() {
  local want
  want=$(podmirror_apt_sources deb-src) || return 1
  [ -n "$want" ] || return 0  # every Debian source already has its deb-src entry
  want="# Written by podmirror's build scripts (scripts/lib/apt-src.sh) from this machine's apt sources.
$want"
  if [ "$(cat "$PODMIRROR_APT_SRC_FILE" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" > "$PODMIRROR_APT_SRC_FILE"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  fi
}

# podmirror_apt_proxy_opts: --aptopt arguments repeating the machine's apt proxy settings (for
# mmdebstrap, whose apt runs with its own configuration).
podmirror_apt_proxy_opts() {
  apt-config dump | grep -E '^Acquire::[a-z]+::Proxy ' | sed 's/^/--aptopt=/'
}

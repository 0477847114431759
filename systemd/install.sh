#!/bin/sh
# Installs lbd: the lbd and lbctl binaries, the systemd units, the `lbd`
# system user, /etc/lbd/lbd.toml (an existing one is kept), man pages and
# shell completions generated from the binaries, and the example configs.
# See docs/install.md.
#
#   cargo build --release --locked && sudo systemd/install.sh
#
# Everything is relative to these (environment variables):
#   DESTDIR       staging root, e.g. for packaging or a test  (default: none)
#   PREFIX        /usr/local; /usr for a distribution package
#   BINDIR        $PREFIX/bin
#   SYSCONFDIR    /etc
#   UNITDIR       $PREFIX/lib/systemd/system
#   SYSUSERSDIR   $PREFIX/lib/sysusers.d
#   MANDIR        $PREFIX/share/man
#   DATADIR       $PREFIX/share
#   LBD_BINARIES  directory holding built lbd and lbctl
#                 (default: ${CARGO_TARGET_DIR:-target}/release, built if missing)
#   CREATE_USER   yes: create the `lbd` system user now; default yes for a
#                 live install (DESTDIR empty), no for a staged one
#
# The user is created with systemd-sysusers when present, else useradd. A
# staged install ships the sysusers.d entry, which creates it at boot or
# package install.
set -eu

cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-$PREFIX/lib/sysusers.d}
MANDIR=${MANDIR:-$PREFIX/share/man}
DATADIR=${DATADIR:-$PREFIX/share}
DESTDIR=${DESTDIR:-}
if [ -z "$DESTDIR" ]; then CREATE_USER=${CREATE_USER:-yes}; else CREATE_USER=${CREATE_USER:-no}; fi

if [ -z "${LBD_BINARIES:-}" ]; then
    LBD_BINARIES=${CARGO_TARGET_DIR:-target}/release
    if [ ! -x "$LBD_BINARIES/lbd" ] || [ ! -x "$LBD_BINARIES/lbctl" ]; then
        echo "install.sh: building release binaries (cargo build --release --locked)"
        cargo build --release --locked
    fi
fi
for bin in lbd lbctl; do
    if [ ! -x "$LBD_BINARIES/$bin" ]; then
        echo "install.sh: $LBD_BINARIES/$bin is missing: build it (cargo build --release) or set LBD_BINARIES" >&2
        exit 1
    fi
done

say() { echo "install.sh: $*"; }

# install(1) with its parent directories created.
put() { # MODE SOURCE TARGET
    install -d -m 0755 "$(dirname "$3")"
    install -m "$1" "$2" "$3"
}

for bin in lbd lbctl; do
    put 0755 "$LBD_BINARIES/$bin" "$DESTDIR$BINDIR/$bin"
done
say "binaries in $DESTDIR$BINDIR"

# The units name /usr/local/bin/lbd and /etc/lbd: point them at this layout.
for unit in lbd.service lbd.socket; do
    install -d -m 0755 "$DESTDIR$UNITDIR"
    sed -e "s|/usr/local/bin/|$BINDIR/|g" -e "s|/etc/lbd/|$SYSCONFDIR/lbd/|g" \
        "systemd/$unit" >"$DESTDIR$UNITDIR/$unit"
    chmod 0644 "$DESTDIR$UNITDIR/$unit"
done
say "units in $DESTDIR$UNITDIR"

install -d -m 0755 "$DESTDIR$SYSUSERSDIR"
cat >"$DESTDIR$SYSUSERSDIR/lbd.conf" <<'USERS'
# The unprivileged user lbd.service runs as (sysusers.d(5)).
u lbd - "lbd load balancer" / -
USERS
chmod 0644 "$DESTDIR$SYSUSERSDIR/lbd.conf"

config="$DESTDIR$SYSCONFDIR/lbd/lbd.toml"
if [ -e "$config" ]; then
    say "kept the existing $config"
else
    put 0644 config/lbd.toml "$config"
    say "installed $config: edit the servers, then check it with: lbd --check-config $SYSCONFDIR/lbd/lbd.toml"
fi

examples="$DESTDIR$DATADIR/doc/lbd/examples"
install -d -m 0755 "$examples/keepalived" "$examples/static-pod"
install -m 0644 config/*.toml "$examples/"
install -m 0644 config/keepalived/* "$examples/keepalived/"
install -m 0644 config/static-pod/* "$examples/static-pod/"

install -d -m 0755 "$DESTDIR$MANDIR/man8"
"$LBD_BINARIES/lbd" --generate man "$DESTDIR$MANDIR/man8"
"$LBD_BINARIES/lbctl" generate man "$DESTDIR$MANDIR/man8"
chmod 0644 "$DESTDIR$MANDIR"/man8/lbd.8 "$DESTDIR$MANDIR"/man8/lbctl*.8

bash_dir="$DESTDIR$DATADIR/bash-completion/completions"
zsh_dir="$DESTDIR$DATADIR/zsh/site-functions"
fish_dir="$DESTDIR$DATADIR/fish/vendor_completions.d"
install -d -m 0755 "$bash_dir" "$zsh_dir" "$fish_dir"
for bin in lbd lbctl; do
    if [ "$bin" = lbd ]; then generate="--generate"; else generate="generate"; fi
    "$LBD_BINARIES/$bin" $generate completion bash >"$bash_dir/$bin"
    "$LBD_BINARIES/$bin" $generate completion zsh >"$zsh_dir/_$bin"
    "$LBD_BINARIES/$bin" $generate completion fish >"$fish_dir/$bin.fish"
done
say "man pages and completions in $DESTDIR$MANDIR and $DESTDIR$DATADIR"

if [ "$CREATE_USER" = yes ]; then
    if id lbd >/dev/null 2>&1; then
        say "user lbd exists"
    elif command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$SYSUSERSDIR/lbd.conf"
        say "created user lbd (systemd-sysusers)"
    else
        useradd --system --user-group --no-create-home --home-dir / \
            --shell /usr/sbin/nologin --comment "lbd load balancer" lbd
        say "created user lbd (useradd)"
    fi
fi
if [ -z "$DESTDIR" ]; then
    say "next: systemctl daemon-reload && systemctl enable --now lbd.service"
    say "      (and lbd.socket for socket activation: docs/install.md)"
fi

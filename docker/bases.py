"""The base images of the stack: the official ones where Docker can pull them, else local stand-ins.

Where Docker Hub cannot be reached, `python:3.11-slim` and `redis:7-alpine` are replaced by images
made of Debian bookworm packages (`debootstrap --variant=minbase`, `docker import`, then
docker/base/*.Dockerfile). The imported Debian image is made once; the stand-ins are rebuilt from
Docker's layer cache, so later runs reuse them.
Usage (as root for debootstrap): python3 docker/bases.py   # prints PYTHON_IMAGE=... REDIS_IMAGE=...
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEBIAN_IMAGE = "bbcu-local/debian:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# certificate authorities this host adds to its trust store; the stand-ins trust them too
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
PULL_TIMEOUT_S = 120
# like Debian's own slim images: no manuals, translations or docs (their copyright files stay)
DPKG_EXCLUDES = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
"""
# like them too: apt keeps no downloaded packages or caches in an image layer
APT_CLEAN = """DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""
# the imported image carries this label: a changed recipe makes it again
RECIPE = hashlib.sha256(f"{DEBIAN_MIRROR}\n{DPKG_EXCLUDES}\n{APT_CLEAN}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Base:
    """A base image: the build argument or compose variable naming it, the official and local tags."""

    variable: str
    official: str
    local: str
    dockerfile: str


BASES = (
    Base("PYTHON_IMAGE", "python:3.11-slim", "bbcu-local/python:3.11", "python.Dockerfile"),
    Base("REDIS_IMAGE", "redis:7-alpine", "bbcu-local/redis:7", "redis.Dockerfile"),
)


def log(msg: str) -> None:
    print(f"[bases] {msg}", file=sys.stderr, flush=True)


def present(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def pull(image: str) -> bool:
    try:
        done = subprocess.run(["docker", "pull", "-q", image], capture_output=True, text=True,
                              timeout=PULL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False
    if done.returncode != 0:
        log(f"cannot pull {image}: {done.stderr.strip().splitlines()[-1:]}")
    return done.returncode == 0


def import_debian() -> None:
    """A minimal Debian bookworm root file system, imported as an image."""
    if shutil.which("debootstrap") is None:
        raise SystemExit("no base image can be pulled and debootstrap is missing (apt-get install it)")
    with tempfile.TemporaryDirectory(prefix="bbcu-debian-") as tmp:
        root = Path(tmp) / "root"
        log(f"debootstrap --variant=minbase bookworm ({DEBIAN_MIRROR})")
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR],
                       check=True, stdout=subprocess.DEVNULL)
        (root / "etc/dpkg/dpkg.cfg.d/excludes").write_text(DPKG_EXCLUDES)
        (root / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN)
        for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/man/*",
                        "usr/share/info/*", "usr/share/locale/*"):
            for path in root.glob(pattern):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "--change", 'CMD ["bash"]', "--change",
                        f"LABEL bbcu.recipe={RECIPE}", "-", DEBIAN_IMAGE],
                       stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise SystemExit("tar of the debootstrap tree failed")


def build_local(base: Base) -> None:
    """Build the stand-in (cached by Docker's layer cache: a no-op when nothing changed)."""
    made = subprocess.run(["docker", "image", "inspect", "-f", '{{index .Config.Labels "bbcu.recipe"}}',
                           DEBIAN_IMAGE], capture_output=True, text=True).stdout.strip()
    if made != RECIPE:
        import_debian()
    with tempfile.TemporaryDirectory(prefix="bbcu-base-") as tmp:
        context = Path(tmp)
        shutil.copy(HERE / "base" / base.dockerfile, context / "Dockerfile")
        certs = context / "ca-certificates"
        certs.mkdir()
        for cert in HOST_CA_DIR.glob("*.crt"):
            shutil.copy(cert, certs / cert.name)
        done = subprocess.run(["docker", "build", "--network", "host", "-q", "-t", base.local,
                               "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}", str(context)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"building {base.local} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def resolve(base: Base) -> str:
    """The official image if it is here or can be pulled; else the local stand-in."""
    if present(base.official) or pull(base.official):
        return base.official
    log(f"using {base.local} for {base.official}")
    build_local(base)
    return base.local


def resolve_all() -> dict[str, str]:
    return {base.variable: resolve(base) for base in BASES}


if __name__ == "__main__":
    for name, image in resolve_all().items():
        print(f"{name}={image}")

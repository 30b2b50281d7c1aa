"""A proxy configured in front of a real Orthanc, for tests and benchmarks that kill, restart and
retry it: one study written and uploaded, an exam view (SQLite) holding its row, an AE title of
its own that Orthanc knows as a C-MOVE destination, and the TOML that ties them together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import create_engine

from dicomproxy.transport.net import Remote
from testkit import free_port
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows


@dataclass(frozen=True)
class ProxySite:
    toml: Path
    ae_title: str
    port: int
    #: SOP Instance UIDs of the study.
    expected: frozenset[str]
    files: tuple[Path, ...]

    @property
    def remote(self) -> Remote:
        return Remote(self.ae_title, "127.0.0.1", self.port)


def proxy_site(
    tmp: Path,
    orthanc: Orthanc,
    spec: StudySpec,
    retrieve: str,
    peers: dict[str, int],
    data_dir: Path | str = "var",
    resume_window: float = 0,
) -> ProxySite:
    """Write ``spec``'s study, upload it to ``orthanc``, and configure a proxy whose PACS is that
    Orthanc (``retrieve``: c-move or c-get) and whose ``[[peers]]`` are ``peers`` (AE title → port
    on 127.0.0.1). Orthanc finds a C-MOVE destination by AE title: each site gets its own (the
    session's Orthanc is shared, and an older entry with the same title would point at a dead port)."""
    files = write_study(spec, tmp / "study")
    orthanc.upload(files)
    port = free_port()
    ae_title = f"DP{port}"
    orthanc.add_modality(ae_title.lower(), Remote(ae_title, "127.0.0.1", port))
    view_url = f"sqlite:///{tmp / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(spec)])
    engine.dispose()
    peer_blocks = "".join(
        f'\n[[peers]]\nae_title = "{ae}"\nhost = "127.0.0.1"\nport = {peer_port}\n'
        for ae, peer_port in peers.items()
    )
    toml = tmp / "proxy.toml"
    toml.write_text(
        f"""
[proxy]
ae_title = "{ae_title}"
host = "127.0.0.1"
port = {port}
data_dir = "{data_dir}"
dimse_timeout = 30
retries = 1
retry_delay = 0.1

[hospital]
id = "74580626"

[view]
url = "{view_url}"

[pacs]
ae_title = "{orthanc.remote.ae_title}"
host = "127.0.0.1"
port = {orthanc.remote.port}
retrieve = "{retrieve}"
dimse_timeout = 30
{peer_blocks}
[journal]
resume_window = {resume_window}

# no HTTP console: it would default to the fixed port 8080, shared with every concurrent run
[http]
port = 0
"""
    )
    expected = frozenset(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files)
    return ProxySite(toml, ae_title, port, expected, tuple(files))

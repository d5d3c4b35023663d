"""results.html rendered by headless Chromium (Debian `chromium`; issue 19): every image decodes, every section is
there.  Slow (a tiny run and a browser start); skipped where Chromium is not installed (`apt-get install chromium`)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHECK = """<script>
addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  const sections = [...document.querySelectorAll("section")].map(s => s.id).join(",");
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = `images=${document.images.length} broken=${broken} sections=${sections}`;
  document.body.appendChild(out);
});
</script></body>"""

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")]


def test_chromium_renders_every_image_and_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "genretr.run", "debug=tiny", "logger=none", "threads=1",
                          "method=generative", "identifier=genius", "eval.page_queries=3",
                          f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    page = (tmp_path / "run" / "results.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK))
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r"images=(\d+) broken=(\d+) sections=([\w,-]+)", dom.stdout)
    assert found, (dom.stdout[-1000:], dom.stderr[-1000:])
    images, broken, sections = int(found[1]), int(found[2]), found[3].split(",")
    assert images > 3 * 10 and broken == 0  # every query, hit and code-tree thumbnail decodes
    assert sections == ["metrics", "task-t2i", "code-tree"]

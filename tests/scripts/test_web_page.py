"""sample-interactive.py --web: its bad command lines, its imports, and the page the real script
serves on the tiny prior, read over HTTP and used in headless Chromium driven by Selenium.

The browser is Debian's chromium and chromium-driver (`make system-packages` installs them). Without
them the browser test fails, saying how to install them, in CI and for root (who can install
them); anyone else is skipped with the same message.
"""
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from urllib.request import urlopen

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, assert_user_error
from tests.scripts.test_bad_inputs import Case, assert_refused

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "install them with `make system-packages` (as root: apt-get install -y chromium chromium-driver)"


# --- the command line ----------------------------------------------------------------------------


def web(c, *args):
    return ["sample-interactive.py", "--web", "--cfg-path", c.prior.cfg, "--resume", c.prior.last, *args]


def port_in_use(c):
    listener = socket.create_server(("127.0.0.1", 0))
    c.releases.append(listener.close)
    return web(c, "--port", listener.getsockname()[1])


CASES = {
    "port-range": (lambda c: web(c, "--port", 70000), "--port 70000: expected 1..65535"),
    "port-in-use": (port_in_use, "cannot listen there (Address already in use)"),
    "host-not-here": (lambda c: web(c, "--host", "192.0.2.1"), "--host 192.0.2.1: cannot listen there"),
    "sampling-flag": (lambda c: web(c, "--temperature", 0), "--temperature: expected float > 0"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_web_command_line_is_one_line_exit_2_and_writes_nothing(name, tmp_path, tiny_prior):
    assert_refused(Case(tmp_path, tiny_prior), *CASES[name])


def test_the_command_line_is_read_before_lightning_and_gradio_are_imported():
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "sample-interactive.py"), "--bogus"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert_user_error(proc, "sample-interactive.py: the following arguments are required")
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported  # the report is read right
    assert not {name for name in imported if name.split(".")[0] in ("pytorch_lightning", "lightning", "gradio")}


# --- the page over HTTP --------------------------------------------------------------------------


def free_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def fetch(url, timeout=30):
    with urlopen(url, timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="module")
def server(tiny_prior, tmp_path_factory):
    """The real script serving the tiny prior on a free port: (base URL, log path)."""
    root = tmp_path_factory.mktemp("web")
    port, log = free_port(), root / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(root / "gradio")}
    with open(log, "w") as out:
        command = [sys.executable, str(REPO / "sample-interactive.py"), "--web", "--port", str(port),
                   "--cfg-path", str(tiny_prior.cfg), "--resume", str(tiny_prior.last), "--device", "cpu"]
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with status {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                fetch(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer within 180 s:\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoadedURLs(HTMLParser):
    """The URLs an HTML page makes a browser load: scripts, stylesheets and other <link>s that
    fetch (icons, manifests, preloads, preconnects), images, frames and media, and the url()s of
    its inline CSS. Not links to follow (<a href>) nor metadata (<meta content>), which load
    nothing."""
    NOT_FETCHED = {"canonical", "alternate", "author", "license", "help", "next", "prev", "search", "bookmark", "me"}
    SOURCES = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src", "audio": "src",
               "embed": "src", "track": "src", "object": "data", "input": "src"}

    def __init__(self):
        super().__init__()
        self.urls, self.stylesheets, self.css = [], [], []
        self.in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        rel = set((attrs.get("rel") or "").lower().split())
        if tag == "link" and attrs.get("href") and not rel <= self.NOT_FETCHED:
            self.urls.append(attrs["href"])
            if "stylesheet" in rel:
                self.stylesheets.append(attrs["href"])
        if tag in self.SOURCES and attrs.get(self.SOURCES[tag]):
            self.urls.append(attrs[self.SOURCES[tag]])
        if attrs.get("srcset"):
            self.urls += [part.split()[0] for part in attrs["srcset"].split(",") if part.strip()]
        if attrs.get("style"):
            self.css.append(attrs["style"])
        self.in_style = tag == "style"

    def handle_endtag(self, tag):
        self.in_style = False

    def handle_data(self, data):
        if self.in_style:
            self.css.append(data)


def css_urls(css):
    """The URLs a style sheet loads: its url(...)s, and its @imports given as bare strings."""
    urls = re.findall(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", css) + re.findall(r"""@import\s+(['"])(.*?)\1""", css)
    return [u for _, u in urls]


def foreign(urls, base):
    """The URLs, resolved against `base`, that reach another host than base's (data: and blob:
    are in the page itself)."""
    here = urlsplit(base).netloc
    resolved = (urlsplit(urljoin(base, u.strip())) for u in urls)
    return sorted(u.geturl() for u in resolved if u.scheme not in ("data", "blob") and u.netloc != here)


def external_references(base):
    """What the page at `base` would load from other hosts: its HTML's loaded URLs, those of its
    style sheets and of the theme's, and the style sheets the front-end adds from its config."""
    page = LoadedURLs()
    page.feed(fetch(base).decode())
    config = json.loads(fetch(urljoin(base, "config")))
    urls = page.urls + list(config.get("stylesheets") or [])
    sheets = page.stylesheets + ["theme.css"] + [u for u in config.get("stylesheets") or [] if not foreign([u], base)]
    for css in page.css + [config.get("css") or ""] + [fetch(urljoin(base, s)).decode() for s in sheets]:
        urls += css_urls(css)
    page_head = LoadedURLs()
    page_head.feed(config.get("head") or "")
    return foreign(urls + page_head.urls + css_urls(" ".join(page_head.css)), base)


def test_the_checker_sees_what_a_browser_would_load():
    parser = LoadedURLs()
    parser.feed("""<meta property="og:image" content="https://example.com/x.jpg"><a href="https://example.com/">
        <link rel="stylesheet" href="https://fonts.googleapis.com/css2?family=X">
        <link rel="canonical" href="https://a.b/">
        <script src="./assets/app.js"></script><style>body { background: url('https://cdn.example/b.png') }</style>""")
    assert parser.urls == ["https://fonts.googleapis.com/css2?family=X", "./assets/app.js"]
    css = ("@import url('//fonts.example/f.css'); @import 'https://x.example/y.css'; "
           "a { b: url(data:image/png;base64,xyz) } @font-face { src: url(static/f.woff2) }")
    urls = parser.urls + css_urls(" ".join(parser.css)) + css_urls(css)
    assert foreign(urls, "http://127.0.0.1:5/") == ["http://fonts.example/f.css", "https://cdn.example/b.png",
                                                    "https://fonts.googleapis.com/css2?family=X",
                                                    "https://x.example/y.css"]


@pytest.mark.slow
def test_the_page_loads_nothing_from_other_hosts(server):
    url, _ = server
    assert external_references(url) == []


def outward_address():
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        return s.getsockname()[0]


@pytest.mark.slow
def test_the_page_listens_on_this_machine_only_by_default(server):
    url, log = server
    assert f"Running on local URL:  {url.rstrip('/')}" in log.read_text()
    address = outward_address()
    if address is None or address.startswith("127."):
        pytest.skip("this machine has no address but its loopback one")
    with pytest.raises(OSError):  # refused: nothing listens there
        socket.create_connection((address, urlsplit(url).port), timeout=5).close()


# --- the page in a browser -----------------------------------------------------------------------


def missing_browser(paths=(CHROMIUM, CHROMEDRIVER)):
    """None when Chromium and its driver are installed; else (pytest.fail or pytest.skip, why):
    the test fails in CI and for root, who can install them, and is skipped for anyone else."""
    missing = [path for path in paths if not os.access(path, os.X_OK)]
    if not missing:
        return None
    message = f"{' and '.join(missing)} not found: the browser test needs headless Chromium; {INSTALL}"
    return (pytest.fail if os.environ.get("CI") or os.geteuid() == 0 else pytest.skip), message


def test_a_missing_browser_fails_in_ci_and_for_root_and_skips_otherwise(monkeypatch, tmp_path):
    assert missing_browser([sys.executable]) is None
    monkeypatch.setenv("CI", "true")
    act, message = missing_browser([sys.executable, str(tmp_path / "chromium")])
    assert act is pytest.fail and message.startswith(f"{tmp_path / 'chromium'} not found") and INSTALL in message
    monkeypatch.delenv("CI")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert missing_browser([str(tmp_path / "chromium")])[0] is pytest.fail
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert missing_browser([str(tmp_path / "chromium")])[0] is pytest.skip


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Selenium; nothing it asks of another host resolves."""
    if missing := missing_browser():
        act, message = missing
        act(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request of the page
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


class Page:
    """The served page in the browser, with waits bounded in time."""

    def __init__(self, driver, url):
        self.driver, self.url = driver, url

    def find(self, css):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def wait(self, condition, what, timeout=60):
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05,
                                 ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
                lambda d: condition())
        except TimeoutException:
            body = self.driver.execute_script("return document.body.innerText")
            pytest.fail(f"waited {timeout} s for {what}; the page reads:\n{body[-3000:]}")

    def text(self, css):
        return self.find(css).text

    def type(self, name, text):
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#control-{name} input, #control-{name} textarea")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(text)

    def click(self, css):
        self.find(css).click()

    def message(self, fragment):
        """Wait for a message box (gr.Error, gr.Warning) that says `fragment`."""
        from selenium.webdriver.common.by import By

        self.wait(lambda: any(fragment in e.text for e in self.driver.find_elements(By.CSS_SELECTOR, ".toast-body")),
                  f"a message saying {fragment!r}")

    def image(self, css):
        """The picture an <img> shows: an (H, W, 3) uint8 array."""
        return np.asarray(Image.open(io.BytesIO(fetch(self.find(css).get_attribute("src")))).convert("RGB"))

    def downloads(self, css):
        """{file name suffix: URL} of a gr.File's links."""
        from selenium.webdriver.common.by import By

        links = [a.get_attribute("href") for a in self.driver.find_elements(By.CSS_SELECTOR, f"{css} a")]
        return {("npy" if link.endswith(".npy") else "png"): link for link in links if link}


def requested_urls(driver):
    """Every URL the page asked for since the last call (Chromium's network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.mark.slow
def test_the_page_samples_inpaints_and_shows_mistakes_in_a_browser(server, browser, tiny_prior, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from generation.pretrained import load_prior
    from generation.web import enlarged, grid_of
    from latents.dataset import LatentDataset

    url, _ = server
    prior = load_prior(tiny_prior.cfg, tiny_prior.last)
    page = Page(browser, url)
    browser.get(url)
    page.wait(lambda: page.find("#generate").is_enabled(), "the page")

    # a class out of range: a message, and the server goes on
    page.type("class_idx", "7")
    page.click("#generate")
    page.message("--class-idx 7: out of range, the model has classes 0..1")
    page.type("class_idx", "-1")

    # sample: the grid, its downloads, and the steps as they are streamed (every status shown is kept)
    browser.execute_script("""
        const status = document.querySelector('#sample-status');
        window.seenStatuses = [];
        new MutationObserver(() => window.seenStatuses.push(status.innerText))
            .observe(status, {subtree: true, childList: true, characterData: true});""")
    page.click("#generate")
    page.wait(lambda: "steps used" in page.text("#sample-status"), "the samples", timeout=120)
    files = page.downloads("#sample-files")
    tokens = np.load(io.BytesIO(fetch(files["npy"])))
    assert tokens.shape == (4, 4, 4) and tokens.min() >= 0 and tokens.max() < 5  # the config's nb_samples, 4x4 grids
    native = np.asarray(Image.open(io.BytesIO(fetch(files["png"]))).convert("RGB"))
    assert np.array_equal(native, grid_of(prior, tokens))  # the PNG is the grid of the tokens
    shown = page.image("#grid img")
    assert shown.shape == enlarged(native).shape and shown.shape[0] >= 256 and np.array_equal(shown, enlarged(native))
    assert shown.std() > 0  # not blank
    last = int(page.find("#step input[type=number]").get_attribute("value"))
    assert last >= 2  # the step view went to the last step (min_steps = 2)
    streamed = {int(k) for text in browser.execute_script("return window.seenStatuses")
                for k in re.findall(rf"step (\d+) of {last}", text)}
    # the view advanced through the steps while they streamed (a loaded browser may merge a few)
    assert len(streamed) >= 2 and max(streamed) == last and streamed <= set(range(last + 1)), streamed
    assert np.array_equal(page.image("#step-view img"), shown)  # the last step is the result
    box = page.find("#step input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("0", Keys.ENTER)
    page.wait(lambda: not np.array_equal(page.image("#step-view img"), shown), "the step view at step 0")

    # inpaint a dataset row: mistakes first, then a painted region, then a preset
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Inpaint')]").click()
    page.click("#inpaint")
    page.message("picture: load a dataset row or upload a picture first")
    row = page.find("#row input")
    row.send_keys(Keys.CONTROL, "a")
    row.send_keys("3")
    page.click("#load-row")
    page.wait(lambda: "eval-00003" in page.text("#picture-status"), "the dataset row")
    page.click("#inpaint")
    page.message("mask: it keeps every cell")
    canvas = page.find("#editor canvas")
    ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(25, 25).release().perform()
    page.click("#inpaint")
    page.wait(lambda: "completions" in page.text("#inpaint-status"), "the painted inpainting", timeout=120)
    regenerated = int(re.search(r"regenerated (\d+) of 16 cells", page.text("#inpaint-status")).group(1))
    assert 1 <= regenerated < 16
    painted = page.downloads("#inpaint-files")["npy"]
    browser.find_element(By.XPATH, "//*[@id='preset']//label[contains(., 'bottom half')]").click()
    page.click("#inpaint")
    page.wait(lambda: page.downloads("#inpaint-files").get("npy", painted) != painted, "the preset inpainting",
              timeout=120)
    assert "regenerated 8 of 16 cells, 4 completions" in page.text("#inpaint-status")
    completions = np.load(io.BytesIO(fetch(page.downloads("#inpaint-files")["npy"])))
    known = LatentDataset(tiny_prior.data, "eval")[3][0].numpy()
    assert completions.shape == (4, 4, 4) and (completions[:, :2] == known[:2]).all()  # the top half is kept
    assert page.image("#figure img").std() > 0

    # a picture of the wrong kind
    small = tmp_path / "small.png"
    Image.new("RGB", (2, 2)).save(small)
    page.find("#editor input[type=file]").send_keys(str(small))
    page.click("#inpaint")
    page.message("picture: 2x2 pixels is smaller than the model's 4x4 grid")
    # ... and one the model can read: it is inpainted as the model reads it
    upload = tmp_path / "upload.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(upload)
    page.find("#editor input[type=file]").send_keys(str(upload))
    page.click("#inpaint")
    page.wait(lambda: page.text("#inpaint-status").startswith("upload: regenerated 8 of 16 cells"),
              "the upload's inpainting")

    # nothing came from another host (the browser's own log of the page's requests)
    here = urlsplit(url).netloc
    outside = [u for u in requested_urls(browser)
               if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != here]
    assert not outside
    screenshot(browser, page, Path(os.environ.get("SUNDAE_SCREENSHOT") or tmp_path / "web-page.png"))


def screenshot(driver, page, path):
    """The page after a draw, as docs/web-page.png shows it: a small palette PNG."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Sample')]").click()
    page.wait(lambda: page.find("#grid img").is_displayed(), "the samples tab")
    driver.execute_script("document.querySelectorAll('.toast-close').forEach(b => b.click()); window.scrollTo(0, 0)")
    page.wait(lambda: not driver.find_elements(By.CSS_SELECTOR, ".toast-body"), "the messages to close", timeout=15)
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    shot.quantize(colors=64).save(path, optimize=True)
    assert path.stat().st_size > 0

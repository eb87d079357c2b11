"""Screenshot of a running ``pgn app`` page after it classified one of its example images.

    pgn serve --backbone dinov2-s14-imgfocus &                                    # the unmodified model
    pgn app --adapter export/fmnist-frame --api http://127.0.0.1:8000 &           # the page, on :7860
    python benchmarks/app_screenshot.py --page http://127.0.0.1:7860 --sample 0 --out docs/app.png

Needs Chromium (``apt-get install chromium``) and ``pip install playwright``.
"""
import argparse
import shutil

from playwright.sync_api import sync_playwright


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--page", default="http://127.0.0.1:7860")
    ap.add_argument("--sample", type=int, default=0, help="which example image to click")
    ap.add_argument("--out", default="docs/app.png")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 960, "height": 720})
        page.goto(args.page)
        page.wait_for_selector("#samples img")
        page.click(f"#samples img >> nth={args.sample}")
        page.wait_for_selector("#result:not([hidden])", timeout=120_000)
        page.screenshot(path=args.out, full_page=True)
        print(f"{args.out}: with the adapter {page.inner_text('#label')!r}, without {page.inner_text('#plain')!r}")
        browser.close()


if __name__ == "__main__":
    main()

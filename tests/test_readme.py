"""The README's texture-operator example runs as written (keeps the README true)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_texture_ops_example_runs():
    text = README.read_text()
    section = text[text.index("### Texture operators"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # asserts perfect reconstruction itself
    assert tuple(scope["energy"].shape) == (2, 64, 17)
    assert tuple(scope["equalized"].shape) == (2, 1, 128 * 128)
    assert scope["hist"].sum(1).sub(1).abs().max() < 1e-5

"""The README's Python example runs as written."""

import pathlib
import re


def test_readme_api_example_runs():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no Python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["logs"]["task_losses"].shape == (4, 2)
    assert int(namespace["state"].step) == 0 and namespace["wrt"] == "parameters"

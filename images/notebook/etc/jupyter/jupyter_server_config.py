"""System-wide Jupyter Server configuration of the sandbox notebook image (read-only file).

The image sets JUPYTER_CONFIG_DIR=/etc/jupyter and the spawner JUPYTERHUB_DISABLE_USER_CONFIG=1,
so no configuration is read from the user's home: what is set here (read-only root file
system) cannot be undone from inside the sandbox.
"""

import contextlib
import os
import shutil

c = get_config()  # noqa: F821 - provided by traitlets when this file is loaded

# A getting-started notebook (mock mode, then real answers) in the home volume, if absent.
_GETTING_STARTED = "/opt/sandbox-client/getting-started.ipynb"
_home_copy = os.path.join(os.path.expanduser("~"), "getting-started.ipynb")
if os.path.isfile(_GETTING_STARTED) and not os.path.lexists(_home_copy):
    with contextlib.suppress(OSError):  # a full or read-only home must not stop the server
        shutil.copyfile(_GETTING_STARTED, _home_copy)

# No terminals: kernels are the only place code runs, and they are on the internal network.
c.ServerApp.terminals_enabled = False
# /files, /nbconvert and terminal routes answer 403: the `sandbox_lockdown` server extension
# (sandbox_lockdown.py) is enabled, and jupyter_server_terminals and jupyter_lsp (no language
# servers here; scanning for them slows every spawn) disabled, in
# jupyter_server_config.d/sandbox_lockdown.json (merged with the other extensions' files).
# Belt and braces: the contents manager serves no /files route of its own.
c.ContentsManager.files_handler_class = "sandbox_lockdown.RefusedHandler"
# Hidden files stay hidden in the file browser and the contents API.
c.ContentsManager.allow_hidden = False
# The extension manager lists extensions but cannot install any (no PyPI from here anyway).
c.LabApp.extension_manager = "readonly"
# Do not try to open a browser inside the container.
c.ServerApp.open_browser = False
# No JupyterLab "news" or update checks: the network is internal only.
c.LabApp.news_url = None
# Users cannot re-enable the disabled download/export plugins from the UI.
c.LabApp.lock_all_plugins = True
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"

"""The laptop's side of hpcops: how a CLI call reaches the lab's daemon.

    client.py   the daemon's Unix socket, on the login node
    reach.py    which way a laptop reaches a remote (OpenSSH or paramiko) and why; `remote check`
    openssh.py  the same API from a laptop through the user's own `ssh` (ControlMaster, 2FA, ...)
    remote.py   the same API from a laptop over paramiko (loaded only when that path is chosen)
    relay.py    `hpcops api`: the login node's end of a laptop's SSH channel
    ship.py     before a submit: pin each spec's code to a commit and ship what the mirror lacks
    config.py   the client config: named remotes (~/.config/hpcops/config.yaml)
    config_path.py  where it lives (read without pydantic: no file, no remote)

The wire format (`hpcops.api.protocol`) is shared with the daemon's server and stays in `api/`.
Importing this package imports none of its modules: paramiko stays unloaded for local calls
and for calls through OpenSSH.
"""

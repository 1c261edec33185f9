"""What make-many.py and make-big.py share: the docker-save archive's members and its
two index files (manifest.json, repositories), written as `docker save` writes them."""
import io
import json
import tarfile


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


class Index:
    def __init__(self):
        self.manifest, self.repositories = [], {}

    def image(self, config_name, names, layers, layer_id):
        """One image: its config member, tags, layer members, and the layer ID the
        legacy `repositories` file maps each tag to."""
        self.manifest.append({"Config": config_name, "RepoTags": names, "Layers": layers})
        for n in names:
            repo, tag = n.rsplit(":", 1)
            self.repositories.setdefault(repo, {})[tag] = layer_id

    def write(self, tar):
        compact = {"separators": (",", ":")}
        add(tar, "manifest.json", json.dumps(self.manifest, **compact).encode())
        add(tar, "repositories", json.dumps(self.repositories, **compact).encode())

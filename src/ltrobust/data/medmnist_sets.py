"""The long-tailed 2D MedMNIST v2 sets beside DermaMNIST, read from the ``.npz`` files of the ``medmnist`` package.

MedMNIST v2 (Yang, Shi, Wei, Liu, Zhao, Ke, Pfister and Ni, Scientific Data 2023, https://medmnist.com). Each
set is one ``<name>.npz`` (28x28; MedMNIST+ also ``<name>_64.npz``, ``_128``, ``_224``) in the layout of
:mod:`ltrobust.data.formats.medmnist`; ``data_dir`` is the folder holding it (``python -m medmnist download``
puts them in ``~/.medmnist``). Every set is naturally imbalanced and used as is, with its own val and test
splits (the ``natural`` rule of :func:`ltrobust.data.build_data`: no profile, no further selection).
Class names are MedMNIST's ``INFO[name]["label"]``; per-class counts come from the file
(``ltrobust data info organamnist data_dir=...``).

Registered here (2D, single-label, more than two classes; the binary PneumoniaMNIST / BreastMNIST, the
ordinal RetinaMNIST and the multi-label ChestMNIST are left out):

==============  =======  ========  ==========  ================================================  =====
name            classes  channels  train       imaging                                           flip
==============  =======  ========  ==========  ================================================  =====
``organamnist``      11         1      34,561  abdominal CT, axial slices                        no
``organcmnist``      11         1      12,975  abdominal CT, coronal slices                      no
``organsmnist``      11         1      13,932  abdominal CT, sagittal slices                     no
``bloodmnist``        8         3      11,959  blood cell microscopy                             yes
``pathmnist``         9         3      89,996  colon pathology (H&E tiles)                       yes
``octmnist``          4         1      97,477  retinal OCT                                       yes
``tissuemnist``       8         1     165,466  kidney cortex microscopy                          yes
==============  =======  ========  ==========  ================================================  =====

The Organ sets are never flipped horizontally: their labels name sides (femur-left / femur-right,
kidney-left / ...), which a flip would swap. Normalisation 0.5 / 0.5 per channel, as DermaMNIST and
MedMNIST's reference code.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from ..config import DataConfig
from .formats.base import RawData
from .formats.medmnist import read_medmnist
from .lt import DatasetSpec, register

ORGAN_CLASSES = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                 "lung-left", "lung-right", "pancreas", "spleen"]

#: name -> (class names, channels, flip, summary)
MEDMNIST_SETS: dict[str, tuple[list[str], int, bool, str]] = {
    "organamnist": (ORGAN_CLASSES, 1, False, "MedMNIST OrganAMNIST npz (abdominal CT, axial), naturally imbalanced"),
    "organcmnist": (ORGAN_CLASSES, 1, False, "MedMNIST OrganCMNIST npz (abdominal CT, coronal), naturally imbalanced"),
    "organsmnist": (ORGAN_CLASSES, 1, False, "MedMNIST OrganSMNIST npz (abdominal CT, sagittal), naturally imbalanced"),
    "bloodmnist": (["basophil", "eosinophil", "erythroblast",
                    "immature granulocytes (myelocytes, metamyelocytes and promyelocytes)", "lymphocyte",
                    "monocyte", "neutrophil", "platelet"], 3, True,
                   "MedMNIST BloodMNIST npz (blood cells), naturally imbalanced"),
    "pathmnist": (["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                   "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"], 3, True,
                  "MedMNIST PathMNIST npz (colon pathology), mildly imbalanced"),
    "octmnist": (["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"], 1, True,
                 "MedMNIST OCTMNIST npz (retinal OCT), naturally imbalanced"),
    "tissuemnist": (["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
                     "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                     "Thick Ascending Limb"], 1, True, "MedMNIST TissueMNIST npz (kidney cortex), naturally imbalanced"),
}


def medmnist_reader(name: str, class_names: Sequence[str]):
    """The reader of ``<name>.npz`` with MedMNIST's class names."""
    names = list(class_names)

    def read(cfg: DataConfig) -> RawData:
        return replace(read_medmnist(cfg, name), class_names=list(names))

    read.__name__ = f"read_{name}"
    return read


for _name, (_classes, _channels, _flip, _summary) in MEDMNIST_SETS.items():
    # n_max 0: a natural set takes its counts from the file (data info prints them); crop padding 3 at 28 px
    register(DatasetSpec(_name, medmnist_reader(_name, _classes), len(_classes), 0, _channels, 28, -1, 3, _flip,
                         (0.5,) * _channels, (0.5,) * _channels, natural=True, summary=_summary))

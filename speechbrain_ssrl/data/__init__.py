"""Data: VoxCeleb preparation, the MiniVox corpus builder, trial lists, augmentation data, crops/views.

* ``minivox``       offline VoxCeleb-shaped corpus from Debian voices: ``build(out, size=...)``
* ``voxceleb``      VoxCeleb folders -> SpeechBrain CSVs: ``prepare_voxceleb(...)``
* ``folder``        any folder of recordings or a user CSV -> the same training CSV: ``prepare_folder(...)``
* ``trials``        ``veri_test2.txt``-format trial lists: ``read_trials``, ``resolve_trial_paths``
* ``augment_data``  noise / RIR CSVs for ``speechbrain.augment``: ``make_augment_csv``
* ``views``         random crops, multi-crop and student/teacher views

Submodules are imported on demand (``from speechbrain_ssrl.data.minivox import build``), so that the
corpus tools do not pull in torch.
"""

"""AnnotatedData (SSD fork): records round trip, resize geometry, samplers, augmentation, errors.

Expected boxes are hand-computed from the fork's formulas (TransformAnnotation, ProjectBBox,
UpdateBBoxByResizePolicy). The layer works in float32 as the fork does; a normalized coordinate
(magnitude <= 1) passes through a handful of float32 operations, so 1e-6 (~16 eps) bounds the
difference from the exact decimal value.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from annotated_case import annotated_datum, random_groups, write_annotated_db
from google.protobuf import text_format

import caffe.layer
from caffe import bbox_util, common
from caffe.data import im_transforms, sampler
from caffe.data import image as imagemod
from caffe.data.annotated_transformer import AnnotatedTransformer, Annotations
from caffe.data.transformer import DataTransformer
from caffe.errors import DataError, LayerError
from caffe.proto import caffe_pb2

from data_case import forward_timed, make_data_layer, setup_layer

pytest.importorskip("lmdb")
ATOL = 1e-6

# Two 3 x 20 x 30 images with known boxes: group 1 has two boxes (one difficult), group 2 one.
GROUPS = [{1: [(0, [0.1, 0.2, 0.5, 0.6], False), (1, [0.4, 0.3, 0.6, 0.7], True)],
           2: [(5, [0.0, 0.0, 1.0, 1.0], False)]},
          {3: [(2, [0.25, 0.5, 0.75, 0.9], True)]}]


def images(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 20, 30), dtype=np.uint8)


def expected_rows(groups_per_item):
    rows = [[item, g, inst, *box, float(diff)]
            for item, groups in enumerate(groups_per_item)
            for g, annos in groups.items() for inst, box, diff in annos]
    return np.asarray(rows, dtype=np.float32)


def layer_text(source, batch_size=2, transform="", annotated="", extra=""):
    return (f"type: 'AnnotatedData' data_param {{ source: '{source}' backend: LMDB "
            f"batch_size: {batch_size} }} transform_param {{ {transform} }} "
            f"annotated_data_param {{ {annotated} }} {extra}")


def run(source, phase="TEST", batches=1, **kw):
    layer = make_data_layer(layer_text(source, **kw), phase=phase)
    top = setup_layer(layer)
    out = []
    for _ in range(batches):
        forward_timed(layer, top)
        out.append((top[0].data.copy(), top[1].data.copy()))
    return out


@pytest.fixture
def db(tmp_path):
    imgs = images()
    path = tmp_path / "raw_lmdb"
    write_annotated_db(path, [annotated_datum(imgs[i], GROUPS[i]) for i in range(2)])
    return str(path), imgs


# --- round trip -------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["", "png"])
def test_round_trip_test_phase_boxes_labels_difficult_pixels(tmp_path, encoding):
    imgs = images()
    path = tmp_path / "db"
    write_annotated_db(path, [annotated_datum(imgs[i], GROUPS[i], encoding) for i in range(2)])
    layer = make_data_layer(layer_text(path), phase="TEST")
    top = setup_layer(layer)
    # Setup shapes the label from the first record: 3 boxes.
    assert top[0].shape == (2, 3, 20, 30) and top[1].shape == (1, 1, 3, 8)
    forward_timed(layer, top)
    np.testing.assert_array_equal(top[0].data, imgs.astype(np.float32))
    assert top[1].shape == (1, 1, 4, 8)
    # Untransformed boxes are the written float32 values exactly.
    np.testing.assert_array_equal(top[1].data[0, 0], expected_rows(GROUPS))
    # model_libs' CreateAnnotatedDataLayer gives TEST nets one default sampler: whole-image
    # windows, so nothing changes.
    (data, label), = run(path, annotated="batch_sampler {}")
    np.testing.assert_array_equal(data, imgs.astype(np.float32))
    np.testing.assert_array_equal(label[0, 0], expected_rows(GROUPS))


def test_mean_and_scale_and_datum_labels_without_annotation_type(tmp_path):
    imgs = images()
    path = tmp_path / "db"
    write_annotated_db(path, [annotated_datum(imgs[i], {}, label=7 + i, with_type=False)
                              for i in range(2)])
    (data, label), = run(path, transform="mean_value: 10 mean_value: 20 mean_value: 30 "
                                         "scale: 0.5")
    mean = np.array([10, 20, 30], np.float32)[None, :, None, None]
    np.testing.assert_array_equal(data, (imgs - mean) * np.float32(0.5))
    np.testing.assert_array_equal(label, np.reshape([7, 8], (2, 1, 1, 1)))


def test_empty_batch_gives_one_row_of_minus_ones(tmp_path):
    imgs = images()
    path = tmp_path / "db"
    write_annotated_db(path, [annotated_datum(imgs[i], {}) for i in range(2)])
    layer = make_data_layer(layer_text(path), phase="TEST")
    top = setup_layer(layer)
    assert top[1].shape == (1, 1, 1, 8)
    forward_timed(layer, top)
    np.testing.assert_array_equal(top[1].data, -np.ones((1, 1, 1, 8)))


# --- box utilities and resize policy (the fork's unit-test cases) -----------------------------
def f32(rows):
    return np.asarray(rows, dtype=np.float32)


def test_np_box_geometry_matches_the_fork_cases():
    ref = f32([0.2, 0.3, 0.3, 0.5])
    tests = f32([[0.1, 0.1, 0.3, 0.4], [0.1, 0.1, 0.4, 0.6], [0, 0, 0.1, 0.1]])
    np.testing.assert_allclose(bbox_util.np_intersect(ref, tests),
                               [[0.2, 0.3, 0.3, 0.4], [0.2, 0.3, 0.3, 0.5], [0, 0, 0, 0]],
                               atol=ATOL)
    np.testing.assert_allclose(bbox_util.np_jaccard(ref, tests), [1 / 7, 2 / 15, 0], atol=ATOL)
    # Coverage of ref: 0.01 / 0.02 and all of it; of the tests by ref: 0.01 / 0.06, 0.02 / 0.15.
    np.testing.assert_allclose(bbox_util.np_coverage(np.broadcast_to(ref, (3, 4)), tests),
                               [0.5, 1, 0], atol=ATOL)
    np.testing.assert_allclose(bbox_util.np_coverage(tests, ref), [1 / 6, 2 / 15, 0], atol=ATOL)
    # Projection into [0.2, 0.2, 0.6, 0.6]: clipped, and dropped when only touching.
    proj, valid = bbox_util.np_project(f32([0.2, 0.2, 0.6, 0.6]),
                                       f32([[0.3, 0.1, 0.5, 0.7], [0.6, 0.2, 0.8, 0.4]]))
    np.testing.assert_allclose(proj[0], [0.25, 0, 0.75, 1], atol=ATOL)
    np.testing.assert_array_equal(valid, [True, False])
    np.testing.assert_allclose(bbox_util.np_locate(f32([0.2, 0.2, 0.6, 0.6]),
                                                   f32([0.25, 0, 0.75, 1])),
                               [0.3, 0.2, 0.5, 0.6], atol=ATOL)


def test_update_bbox_by_resize_policy_fork_cases():
    box = f32([[0.1, 0.3, 0.3, 0.6]])
    param = caffe_pb2.ResizeParameter(height=300, width=300)
    for mode in (im_transforms.WARP, im_transforms.FIT_SMALL_SIZE):
        param.resize_mode = mode
        np.testing.assert_allclose(
            im_transforms.update_bbox_by_resize_policy(param, 1000, 600, box), box, atol=ATOL)
    param.resize_mode = im_transforms.FIT_LARGE_SIZE_AND_PAD
    np.testing.assert_allclose(im_transforms.update_bbox_by_resize_policy(param, 1000, 600, box),
                               [[0.1, (180 * 0.3 + 60) / 300, 0.3, (180 * 0.6 + 60) / 300]],
                               atol=ATOL)
    np.testing.assert_allclose(im_transforms.update_bbox_by_resize_policy(param, 600, 1000, box),
                               [[(180 * 0.1 + 60) / 300, 0.3, (180 * 0.3 + 60) / 300, 0.6]],
                               atol=ATOL)


def test_apply_resize_sizes_fork_cases():
    img = np.zeros((60, 100, 3), np.uint8)
    param = caffe_pb2.ResizeParameter(height=30, width=30)
    for mode, size in ((im_transforms.WARP, (30, 30)), (im_transforms.FIT_SMALL_SIZE, (30, 50)),
                       (im_transforms.FIT_LARGE_SIZE_AND_PAD, (30, 30))):
        param.resize_mode = mode
        out = im_transforms.apply_resize(img, param, caffe_pb2.ResizeParameter.LINEAR)
        assert out.shape == (*size, 3)
        assert im_transforms.infer_new_size(param, 100, 60) == size[::-1]


def test_sample_constraint_first_enabled_check_decides_as_in_the_fork():
    sample = f32([[0, 0, 0.5, 0.5]])
    gt = f32([[0, 0, 1, 1]])  # jaccard 0.25; the sample is fully covered (coverage 1)
    constraint = caffe_pb2.SampleConstraint(min_jaccard_overlap=0.2, max_sample_coverage=0.5)
    # The jaccard bound passes, the coverage bound fails: the fork still accepts the window.
    assert sampler.satisfy_sample_constraint(sample, gt, constraint).tolist() == [True]
    constraint.min_jaccard_overlap = 0.3
    assert sampler.satisfy_sample_constraint(sample, gt, constraint).tolist() == [False]
    assert sampler.satisfy_sample_constraint(sample, gt[:0], constraint).tolist() == [False]
    assert sampler.satisfy_sample_constraint(
        sample, gt[:0], caffe_pb2.SampleConstraint()).tolist() == [True]


# --- TEST-phase geometry ----------------------------------------------------------------------
def test_center_crop_projects_clips_and_drops_boxes(tmp_path):
    # 20 x 30 image, crop 10: offsets (5, 10), window [1/3, 1/4, 2/3, 3/4].
    groups = {1: [(0, [0.4, 0.3, 0.6, 0.7], False),    # inside: (0.2, 0.1, 0.8, 0.9)
                  (1, [0.0, 0.0, 0.1, 0.1], False),    # outside: dropped
                  (2, [0.5, 0.5, 0.8, 0.8], True)],    # centre (0.65, 0.65) in: clipped
              2: [(3, [0.0, 0.5, 0.4, 0.6], False)]}   # centre x 0.2 out: kept unless CENTER
    img = images(1)
    path = tmp_path / "db"
    write_annotated_db(path, [annotated_datum(img[0], groups)])
    (data, label), = run(path, batch_size=1, transform="crop_size: 10")
    np.testing.assert_array_equal(data[0], img[0, :, 5:15, 10:20])
    expected = [[0, 1, 0, 0.2, 0.1, 0.8, 0.9, 0], [0, 1, 2, 0.5, 0.5, 1.0, 1.0, 1],
                [0, 2, 3, 0.0, 0.5, 0.2, 0.7, 0]]
    np.testing.assert_allclose(label[0, 0], expected, atol=ATOL)
    (_, label), = run(path, batch_size=1, transform="crop_size: 10 emit_constraint "
                                                    "{ emit_type: CENTER }")
    np.testing.assert_allclose(label[0, 0], expected[:2], atol=ATOL)
    # MIN_OVERLAP: the window covers 0.46 of box 2's area and 1/6 of box 3's.
    (_, label), = run(path, batch_size=1, transform="crop_size: 10 emit_constraint "
                                                    "{ emit_type: MIN_OVERLAP emit_overlap: 0.2 }")
    np.testing.assert_allclose(label[0, 0], expected[:2], atol=ATOL)


def test_resize_warp_geometry_and_pixels(db):
    path, imgs = db
    (data, label), = run(path, transform="resize_param { resize_mode: WARP height: 10 "
                                         "width: 12 }")
    assert data.shape == (2, 3, 10, 12)
    want = imagemod.resize(imagemod.to_hwc(imgs[1]), 12, 10).transpose(2, 0, 1)
    np.testing.assert_array_equal(data[1], want)
    # Warping keeps normalized boxes (x * 12 / 30 * 30 / 12 ... in float32).
    np.testing.assert_allclose(label[0, 0], expected_rows(GROUPS), atol=ATOL)


def test_resize_fit_small_size_geometry_and_extrapolation(db):
    path, imgs = db
    resize = "resize_param { resize_mode: FIT_SMALL_SIZE height: 16 width: 16 %s }"
    (data, label), = run(path, batch_size=1, transform=resize % "")
    # Aspect 30/20 = 1.5 >= 1: height 16, width int(1.5 * 16) = 24.
    assert data.shape == (1, 3, 16, 24)
    np.testing.assert_array_equal(
        data[0], imagemod.resize(imagemod.to_hwc(imgs[0]), 24, 16).transpose(2, 0, 1))
    np.testing.assert_allclose(label[0, 0], expected_rows(GROUPS[:1]), atol=ATOL)
    # ExtrapolateBBox: the 24 x 16 crop in a 12 x 8 (width_scale x height_scale) frame: x 2.
    (_, label), = run(path, batch_size=1, transform=resize % "height_scale: 8 width_scale: 12")
    rows = expected_rows(GROUPS[:1])
    rows[:, 3:7] *= 2
    np.testing.assert_allclose(label[0, 0], rows, atol=ATOL)


def test_resize_fit_large_size_and_pad_geometry_and_pixels(tmp_path):
    img = images(1)
    path = tmp_path / "db"
    write_annotated_db(path, [annotated_datum(img[0], {1: [(0, [0.1, 0.2, 0.9, 0.8], 0)]})])
    (data, label), = run(path, batch_size=1, transform=(
        "resize_param { resize_mode: FIT_LARGE_SIZE_AND_PAD height: 16 width: 16 "
        "pad_value: 7 }"))
    # 30 x 20 into 16 x 16: resized to 16 x floor(16 / 1.5) = 10 rows, 3 pad rows each side.
    assert data.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(data[0, :, :3], 7)
    np.testing.assert_array_equal(data[0, :, 13:], 7)
    np.testing.assert_array_equal(
        data[0, :, 3:13], imagemod.resize(imagemod.to_hwc(img[0]), 16, 10).transpose(2, 0, 1))
    # Box y in pixels: padding (16 - 32/3) / 2 = 8/3 plus y * 20 * (32/3) / 20, over 16:
    # ymin (8/3 + 2.1333) / 16 = 0.3, ymax (8/3 + 8.5333) / 16 = 0.7; x unchanged.
    np.testing.assert_allclose(label[0, 0, 0, 3:7], [0.1, 0.3, 0.9, 0.7], atol=ATOL)


def test_mirror_flips_boxes(db):
    path, imgs = db
    seen = set()
    common.set_random_seed(3)
    for data, label in run(path, batch_size=1, transform="mirror: true", batches=8):
        rows = label[0, 0]
        item = 0 if len(rows) == 3 else 1  # record 0 has three boxes, record 1 one
        original = expected_rows([GROUPS[item]])
        if np.array_equal(data[0], imgs[item, :, :, ::-1]):
            seen.add("mirrored")
            flipped = original.copy()
            flipped[:, 3], flipped[:, 5] = 1 - original[:, 5], 1 - original[:, 3]
            np.testing.assert_allclose(rows, flipped, atol=ATOL)
        else:
            np.testing.assert_array_equal(data[0], imgs[item])
            seen.add("plain")
            np.testing.assert_array_equal(rows, original)
    assert seen == {"mirrored", "plain"}


# --- samplers ---------------------------------------------------------------------------------
def jaccard(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


SSD_SAMPLERS = """
batch_sampler { max_sample: 1 max_trials: 1 }
""" + "".join(
    f"batch_sampler {{ sampler {{ min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 "
    f"max_aspect_ratio: 2 }} sample_constraint {{ {c} }} max_sample: 1 max_trials: 50 }}\n"
    for c in ("min_jaccard_overlap: 0.1", "min_jaccard_overlap: 0.5",
              "min_jaccard_overlap: 0.9", "max_jaccard_overlap: 1.0"))


def samplers_of(text):
    return list(text_format.Parse(text, caffe_pb2.AnnotatedDataParameter()).batch_sampler)


def test_sampled_windows_have_the_sampler_geometry_and_meet_jaccard_over_many_seeds():
    unconstrained, *constrained = samplers_of(SSD_SAMPLERS)
    kept = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        boxes = Annotations.from_proto(annotated_datum(images(1)[0], random_groups(rng))).boxes
        # The unconstrained sampler with scale 1 yields the whole image.
        np.testing.assert_array_equal(
            sampler.generate_samples(sampler.UNIT_BOX, boxes, unconstrained, rng), [[0, 0, 1, 1]])
        for bs in constrained:
            bound = bs.sample_constraint
            for s in sampler.generate_samples(sampler.UNIT_BOX, boxes, bs, rng):
                kept += 1
                w, h = s[2] - s[0], s[3] - s[1]
                # float32 rounding can put a full-size window a few eps outside.
                assert (s >= -ATOL).all() and (s <= 1 + ATOL).all()
                assert 0.3 - ATOL <= np.sqrt(w * h) <= 1 + ATOL  # scale = sqrt(w * h)
                assert 0.5 - 1e-5 <= w / h <= 2 + 1e-5            # aspect ratio = w / h
                overlaps = [jaccard(s, b) for b in boxes]
                if bound.HasField("min_jaccard_overlap"):
                    assert max(overlaps) >= bound.min_jaccard_overlap - ATOL
                else:
                    assert min(overlaps) <= bound.max_jaccard_overlap + ATOL
    assert kept > 400


def test_each_constraint_alone_holds_for_every_kept_window():
    rng = np.random.default_rng(0)
    for bound in ("min_jaccard_overlap: 0.5", "max_jaccard_overlap: 0.3",
                  "min_sample_coverage: 0.6", "min_object_coverage: 0.8"):
        (bs,) = samplers_of(f"batch_sampler {{ sampler {{ min_scale: 0.2 max_scale: 1 "
                            f"min_aspect_ratio: 0.5 max_aspect_ratio: 2 }} sample_constraint "
                            f"{{ {bound} }} max_trials: 50 }}")
        kept = 0
        for seed in range(40):
            boxes = Annotations.from_proto(annotated_datum(
                images(1)[0], random_groups(np.random.default_rng(seed)))).boxes
            for s in sampler.generate_samples(sampler.UNIT_BOX, boxes, bs, rng):
                kept += 1
                inter = [max(0, min(s[2], b[2]) - max(s[0], b[0]))
                         * max(0, min(s[3], b[3]) - max(s[1], b[1])) for b in boxes]
                area_s = (s[2] - s[0]) * (s[3] - s[1])
                area_b = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
                if bound.startswith("min_jaccard"):
                    ok = [jaccard(s, b) >= 0.5 - ATOL for b in boxes]
                elif bound.startswith("max_jaccard"):
                    ok = [jaccard(s, b) <= 0.3 + ATOL for b in boxes]
                elif bound.startswith("min_sample"):
                    ok = [i / area_s >= 0.6 - ATOL for i in inter]
                else:
                    ok = [i / a >= 0.8 - ATOL for i, a in zip(inter, area_b)]
                assert any(ok), (bound, s, boxes)
        assert kept > 10, bound


def test_cropped_boxes_lie_in_their_window_and_meet_the_emit_constraint():
    tp = text_format.Parse("emit_constraint { emit_type: CENTER }",
                           caffe_pb2.TransformationParameter())
    at = AnnotatedTransformer(tp, caffe_pb2.TRAIN, DataTransformer(tp, caffe_pb2.TRAIN))
    batch_samplers = samplers_of(SSD_SAMPLERS)[1:]
    emitted = 0
    for seed in range(150):
        rng = np.random.default_rng(seed)
        img = images(1, seed)[0].transpose(1, 2, 0)
        anno = Annotations.from_proto(annotated_datum(img.transpose(2, 0, 1),
                                                      random_groups(rng)))
        for s in sampler.generate_batch_samples(anno.boxes, batch_samplers, rng):
            crop, out = at.crop_image(img, anno, s)
            # Pixels: the window scaled to 30 x 20 and truncated.
            x0, y0 = int(np.float32(s[0]) * 30), int(np.float32(s[1]) * 20)
            np.testing.assert_array_equal(crop[0, 0], img[y0, x0])
            centers = (anno.boxes[:, :2] + anno.boxes[:, 2:]) / 2
            inside = ((centers >= s[:2]) & (centers <= s[2:])).all(axis=1)
            assert len(out) == inside.sum()
            expected = np.clip((anno.boxes[inside] - np.tile(s[:2], 2))
                               / np.tile(s[2:] - s[:2], 2), 0, 1)
            np.testing.assert_allclose(out.boxes, expected, atol=1e-5)
            assert (out.boxes >= 0).all() and (out.boxes <= 1).all()
            np.testing.assert_array_equal(out.instance, anno.instance[inside])
            np.testing.assert_array_equal(out.difficult, anno.difficult[inside])
            emitted += len(out)
    assert emitted > 100


def test_train_layer_with_samplers_expand_distort_keeps_boxes_valid(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (4, 3, 24, 32), dtype=np.uint8)
    path = tmp_path / "db"
    write_annotated_db(path, [annotated_datum(imgs[i], random_groups(rng), "png")
                              for i in range(4)])
    common.set_random_seed(5)
    transform = ("mirror: true mean_value: 104 mean_value: 117 mean_value: 123 "
                 "resize_param { resize_mode: WARP height: 16 width: 16 interp_mode: LINEAR "
                 "interp_mode: AREA interp_mode: NEAREST interp_mode: CUBIC "
                 "interp_mode: LANCZOS4 } emit_constraint { emit_type: CENTER } "
                 "distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 "
                 "contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 "
                 "saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5 "
                 "random_order_prob: 0.5 } expand_param { prob: 0.5 max_expand_ratio: 4 }")
    for data, label in run(path, "TRAIN", batches=6, batch_size=4, transform=transform,
                           annotated=SSD_SAMPLERS):
        assert data.shape == (4, 3, 16, 16) and data.dtype == np.float32
        rows = label[0, 0]
        if rows[0, 0] == -1:
            continue
        assert set(rows[:, 0]) <= {0, 1, 2, 3} and set(rows[:, 1]) <= {1, 2, 3}
        boxes = rows[:, 3:7]
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


# --- expand / distort -------------------------------------------------------------------------
def test_expand_places_image_on_mean_canvas_and_moves_boxes():
    tp = text_format.Parse("mean_value: 104 mean_value: 117 mean_value: 123 "
                           "expand_param { prob: 1 max_expand_ratio: 3 }",
                           caffe_pb2.TransformationParameter())
    at = AnnotatedTransformer(tp, caffe_pb2.TRAIN, DataTransformer(tp, caffe_pb2.TRAIN))
    img = images(1)[0].transpose(1, 2, 0)
    anno = Annotations.from_proto(annotated_datum(img.transpose(2, 0, 1), GROUPS[0]))
    grown = 0
    for seed in range(20):
        canvas, out = at.expand_image(img, anno, np.random.default_rng(seed))
        rows, cols = canvas.shape[:2]
        assert rows >= 20 and cols >= 30
        grown += rows > 20
        # Locate the image from the first box's pixel position, then check the pixels there.
        top = int(round(out.boxes[2, 1] * rows))
        left = int(round(out.boxes[2, 0] * cols))
        np.testing.assert_array_equal(canvas[top:top + 20, left:left + 30], img)
        fill = np.ones((rows, cols), bool)
        fill[top:top + 20, left:left + 30] = False
        np.testing.assert_array_equal(canvas[fill], np.broadcast_to([104, 117, 123],
                                                                    (fill.sum(), 3)))
        # Every box keeps its pixel extent: (b * 30 + left) / cols.
        scale = np.array([30, 20, 30, 20], np.float32)
        offset = np.array([left, top, left, top], np.float32)
        size = np.array([cols, rows, cols, rows], np.float32)
        np.testing.assert_allclose(out.boxes, (anno.boxes * scale + offset) / size, atol=1e-5)
        np.testing.assert_array_equal(out.group, anno.group)
    assert grown > 10


def test_distort_keeps_shape_and_dtype_and_changes_pixels():
    tp = text_format.Parse(
        "distort_param { brightness_prob: 1 brightness_delta: 32 contrast_prob: 1 "
        "contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 1 hue_delta: 18 saturation_prob: 1 "
        "saturation_lower: 0.5 saturation_upper: 1.5 }", caffe_pb2.TransformationParameter())
    at = AnnotatedTransformer(tp, caffe_pb2.TRAIN, DataTransformer(tp, caffe_pb2.TRAIN))
    img = images(1)[0].transpose(1, 2, 0)
    anno = Annotations.from_proto(annotated_datum(img.transpose(2, 0, 1), GROUPS[0]))
    for seed in range(5):
        out, boxes = at.augment(img, anno, [], np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert not np.array_equal(out, img)
        np.testing.assert_array_equal(boxes.boxes, anno.boxes)
    # Channel reordering alone permutes whole planes.
    tp = text_format.Parse("distort_param { random_order_prob: 1 }",
                           caffe_pb2.TransformationParameter())
    at = AnnotatedTransformer(tp, caffe_pb2.TRAIN, DataTransformer(tp, caffe_pb2.TRAIN))
    orders = set()
    for seed in range(20):
        out, _ = at.augment(img, anno, [], np.random.default_rng(seed))
        order = tuple(next(c for c in range(3) if np.array_equal(out[:, :, k], img[:, :, c]))
                      for k in range(3))
        assert sorted(order) == [0, 1, 2]
        orders.add(order)
    assert len(orders) > 2


# --- sharding, errors -------------------------------------------------------------------------
def test_two_ranks_read_disjoint_records(tmp_path):
    imgs = images(6)
    path = tmp_path / "db"
    # One box per record whose instance_id names the record.
    write_annotated_db(path, [annotated_datum(imgs[i], {1: [(i, [0.1, 0.1, 0.5, 0.5], 0)]})
                              for i in range(6)])
    seen = []
    common.set_solver_count(2)
    try:
        for rank in range(2):
            common.set_solver_rank(rank)
            (data, label), = run(path, "TRAIN", batch_size=3)
            seen.append(set(label[0, 0, :, 2].astype(int)))
            for item, record in enumerate(label[0, 0, :, 2].astype(int)):
                np.testing.assert_array_equal(data[item], imgs[record])
    finally:
        common.set_solver_count(1)
        common.set_solver_rank(0)
    assert seen == [{0, 2, 4}, {1, 3, 5}]


def test_bad_records_raise_data_errors_naming_layer_and_key(tmp_path):
    imgs = images()
    path = tmp_path / "db"
    plain = caffe_pb2.Datum(channels=1, height=1, width=1, data=b"x").SerializeToString()
    write_annotated_db(path, [annotated_datum(imgs[0], GROUPS[0]), b"\xff\xff\xff", plain])
    layer = make_data_layer(layer_text(path, batch_size=1), phase="TEST")
    top = setup_layer(layer)
    forward_timed(layer, top)
    with pytest.raises(DataError, match=r"AnnotatedData layer 'data'.*00000001_img1\.png.*"
                                        r"not a serialized AnnotatedDatum"):
        forward_timed(layer, top)
    layer = make_data_layer(layer_text(path, batch_size=1), phase="TEST")
    # A database of plain Datums is refused at setup.
    write_annotated_db(tmp_path / "plain", [plain])
    with pytest.raises(DataError, match=r"AnnotatedData layer 'data'.*holds no datum"):
        setup_layer(make_data_layer(layer_text(tmp_path / "plain"), phase="TEST"))


@pytest.mark.parametrize("transform, annotated, batch, error, message", [
    ("expand_param { max_expand_ratio: 1 }", "", 2, DataError, "max_expand_ratio must be > 1"),
    ("resize_param { height: 0 width: 4 }", "", 2, DataError, "height and width must be > 0"),
    ("resize_param { resize_mode: FIT_SMALL_SIZE height: 4 width: 4 }", "", 2, LayerError,
     "Only support batch size of 1 for FIT_SMALL_SIZE"),
    ("noise_param { convert_to_lab: true }", "", 2, DataError, "convert_to_lab"),
    ("noise_param { saltpepper: true }", "", 2, DataError, "saltpepper_param.value"),
    ("distort_param { brightness_delta: -1 }", "", 2, DataError, "brightness_delta"),
    ("", "batch_sampler { sampler { min_scale: 0 } }", 2, DataError,
     "batch_sampler 0: sampler min_scale must be > 0"),
    ("", "batch_sampler { sampler { min_aspect_ratio: 2 max_aspect_ratio: 1 } }", 2,
     DataError, "max_aspect_ratio"),
])
def test_bad_parameters_raise_errors_naming_the_layer(db, transform, annotated, batch, error,
                                                      message):
    path, _ = db
    layer = make_data_layer(layer_text(path, batch_size=batch, transform=transform,
                                       annotated=annotated), phase="TRAIN")
    with pytest.raises(error, match=f"AnnotatedData layer 'data'.*{message}"):
        setup_layer(layer)


def test_noise_effects_keep_the_shape(db):
    path, imgs = db
    (data, _), = run(path, transform="noise_param { decolorize: true gauss_blur: true "
                                     "hist_eq: true jpeg: 80 erode: true posterize: true "
                                     "inverse: true saltpepper: true saltpepper_param "
                                     "{ fraction: 0.1 value: 0 } }")
    assert data.shape == (2, 3, 20, 30)
    # Posterize then inverse leaves only 255 - (k * 64 + 32) values, salt-and-pepper 0.
    assert set(np.unique(data)) <= {0, 223, 159, 95, 31}


def test_label_map_file_is_read(db, tmp_path, caplog):
    path, _ = db
    labelmap = tmp_path / "labelmap.prototxt"
    labelmap.write_text("item { name: 'none_of_the_above' label: 0 display_name: 'background' }"
                        " item { name: 'cat' label: 1 display_name: 'cat' }")
    layer = make_data_layer(layer_text(path, annotated=f"label_map_file: '{labelmap}'"))
    setup_layer(layer)
    assert [i.name for i in layer.label_map.item] == ["none_of_the_above", "cat"]
    # The fork never opens the file: a missing one is a warning, not a failed setup.
    layer = make_data_layer(layer_text(path, annotated="label_map_file: '/nonexistent/lm'"))
    with caplog.at_level(logging.WARNING, logger="caffe"):
        setup_layer(layer)
    assert layer.label_map is None and "label map file not found: '/nonexistent/lm'" in \
        caplog.text


def test_net_built_with_net_spec_runs_the_layer(db, tmp_path):
    import caffe
    from caffe import layers as L
    from caffe import params as P

    path, _ = db
    n = caffe.NetSpec()
    n.data, n.label = L.AnnotatedData(
        ntop=2, data_param=dict(source=path, batch_size=2, backend=P.Data.LMDB),
        transform_param=dict(mirror=True, mean_value=[104, 117, 123], resize_param=dict(
            resize_mode=P.Resize.WARP, height=8, width=8, interp_mode=[P.Resize.LINEAR]),
            emit_constraint=dict(emit_type=caffe_pb2.EmitConstraint.CENTER)),
        annotated_data_param=dict(batch_sampler=[dict(sampler=dict(min_scale=0.5),
                                                      max_sample=1, max_trials=10)]),
        include=dict(phase=caffe.TRAIN))
    n.silence = L.Silence(n.data, n.label, ntop=0)
    proto = tmp_path / "train.prototxt"
    proto.write_text(str(n.to_proto()))
    net = caffe.Net(str(proto), caffe.TRAIN)
    for _ in range(2):
        net.forward()
        assert net.blobs["data"].data.shape == (2, 3, 8, 8)
        rows = net.blobs["label"].data.reshape(-1, 8)
        assert rows.shape[0] >= 1 and ((rows[:, 0] == -1) | (rows[:, 3:7] >= 0).all(1)).all()


def test_seeded_batches_repeat_whatever_the_decode_thread_count(tmp_path):
    from caffe.data import prefetch

    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (4, 3, 20, 30), dtype=np.uint8)
    path = tmp_path / "db"
    write_annotated_db(path, [annotated_datum(imgs[i], random_groups(rng)) for i in range(4)])
    transform = ("mirror: true resize_param { height: 8 width: 8 } expand_param { prob: 0.5 "
                 "max_expand_ratio: 2 } distort_param { brightness_prob: 0.5 "
                 "brightness_delta: 20 random_order_prob: 0.5 }")
    runs = []
    saved = prefetch.decode_threads()
    try:
        for threads in (1, 3):
            prefetch.set_decode_threads(threads)
            common.set_random_seed(11)
            runs.append(run(path, "TRAIN", batches=2, batch_size=4, transform=transform,
                            annotated=SSD_SAMPLERS))
    finally:
        prefetch.set_decode_threads(saved)
    for (data_a, label_a), (data_b, label_b) in zip(*runs):
        np.testing.assert_array_equal(data_a, data_b)
        np.testing.assert_array_equal(label_a, label_b)


@pytest.mark.parametrize("name, phase", [("mobilenet_ssd_train", "TRAIN"),
                                         ("ssd300_vgg16_voc0712_train", "TRAIN"),
                                         ("ssd300_vgg16_voc0712_test", "TEST")])
def test_published_ssd_data_layers_run_with_their_parameters(tmp_path, name, phase):
    """The AnnotatedData layer of each published SSD prototxt, as written but for its source
    and batch size, reads a small encoded database (its label map file is absent here)."""
    from pathlib import Path

    from caffe.protoio import read_net_param

    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (2, 3, 24, 32), dtype=np.uint8)
    path = tmp_path / "db"
    write_annotated_db(path, [annotated_datum(imgs[i], random_groups(rng), "jpg")
                              for i in range(2)])
    net = read_net_param(Path(__file__).parent / "models" / f"{name}.prototxt")
    (lp,) = [lp for lp in net.layer if lp.type == "AnnotatedData"]
    lp.data_param.source, lp.data_param.batch_size = str(path), 2
    lp.phase = caffe_pb2.Phase.Value(phase)
    layer = caffe.layer.create_layer(lp)
    top = setup_layer(layer)
    for _ in range(2):
        forward_timed(layer, top)
        assert top[0].shape == (2, 3, 300, 300)
        rows = top[1].data.reshape(-1, 8)
        if rows[0, 0] != -1:
            assert (rows[:, 3:7] >= 0).all() and (rows[:, 3:7] <= 1).all()


VOC_XML = """<annotation><size><width>30</width><height>20</height><depth>3</depth></size>
{}</annotation>"""
VOC_OBJECT = """<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin>
<ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>"""


def test_convert_annoset_round_trip(tmp_path):
    """VOC XML -> convert_annoset -> LMDB -> AnnotatedData (TEST, no sampling): boxes (pixel
    corners over the image size), labels, instance ids, difficult flags and pixels."""
    convert = pytest.importorskip("caffe.tools.convert_annoset")
    imgs = images()
    objects = [[("cat", 0, 3, 2, 15, 12), ("dog", 1, 0, 0, 30, 20), ("cat", 1, 9, 4, 21, 18)],
               [("dog", 0, 6, 5, 12, 10)]]
    lines = []
    for i, objs in enumerate(objects):
        (tmp_path / f"im{i}.png").write_bytes(imagemod.imencode(imagemod.to_hwc(imgs[i]), "png"))
        (tmp_path / f"im{i}.xml").write_text(VOC_XML.format(
            "".join(VOC_OBJECT.format(*o) for o in objs)))
        lines.append(f"im{i}.png im{i}.xml")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "labelmap.prototxt").write_text(
        "item { name: 'none_of_the_above' label: 0 } item { name: 'cat' label: 1 } "
        "item { name: 'dog' label: 2 }")
    db_path = tmp_path / "lmdb"
    assert convert.main(["-anno_type", "detection", "-label_map_file",
                         str(tmp_path / "labelmap.prototxt"), "-encoded", "-encode_type", "png",
                         str(tmp_path) + "/", str(tmp_path / "list.txt"), str(db_path)]) == 0
    (data, label), = run(db_path)
    np.testing.assert_array_equal(data, imgs.astype(np.float32))
    # Groups in order of first appearance (cat, dog), instance ids counted per group.
    f = np.float32
    want = [[0, 1, 0, f(3) / 30, f(2) / 20, f(15) / 30, f(12) / 20, 0],
            [0, 1, 1, f(9) / 30, f(4) / 20, f(21) / 30, f(18) / 20, 1],
            [0, 2, 0, 0, 0, 1, 1, 1],
            [1, 2, 0, f(6) / 30, f(5) / 20, f(12) / 30, f(10) / 20, 0]]
    np.testing.assert_array_equal(label[0, 0], np.asarray(want, np.float32))

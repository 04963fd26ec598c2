"""Multimodal inference helpers: closed forms on linear-Gaussian experts, then learning on real pairs.

The closed forms: a product of Gaussian experts with the N(0, 1) prior expert has precision
1 + sum 1/s_i^2 and a precision-weighted mean; a mixture's mean is the weighted mean of its
experts'; a linear decoder maps the latent mean linearly. The learning tests train on SERKET's
image + spoken-digit pairs (``shared/data/serket/mnist3000.npz``: 784 pixels, 2,400 counts)
and judge cross-generated samples with scikit-learn logistic regressions fitted on real data.
"""

import numpy as np
import pytest
import torch
from example_loader import load_example
from mc_reference import assert_mc_close, default_dtype
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from kizuna.distributions import MixtureOfNormal, Normal, ProductOfNormal
from kizuna.inference import coherence, cross_generate, infer_latent, select_encoder
from kizuna.losses import Parameter

SX, SY = 0.5, 2.0  # the experts' scales


@pytest.fixture
def _float64():
    with default_dtype(torch.float64):
        yield


def experts():
    qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=SX, name="q")
    qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=SY, name="q")
    return qx, qy


def rows(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 3, generator=g), "y": torch.randn(n, 3, generator=g)}


def test_product_of_experts_latent_from_every_subset_is_the_precision_weighted_mean(_float64):
    qx, qy = experts()
    q = ProductOfNormal([qx, qy], name="q", features_shape=[3])
    d = rows()
    both = infer_latent(q, d)["z"]
    ref = (d["x"] / SX**2 + d["y"] / SY**2) / (1 + 1 / SX**2 + 1 / SY**2)
    torch.testing.assert_close(both, ref)
    torch.testing.assert_close(infer_latent(q, {"x": d["x"]})["z"], d["x"] / SX**2 / (1 + 1 / SX**2))
    torch.testing.assert_close(infer_latent(q, {"y": d["y"], "w": 1})["z"], d["y"] / SY**2 / (1 + 1 / SY**2))
    # a draw from the product: moments of N(ref, 1 / precision) within 5 standard errors
    torch.manual_seed(0)
    one = {k: v[:1].expand(20000, 3) for k, v in d.items()}
    draws = infer_latent(q, one, sample=True)["z"]
    sd = (1 + 1 / SX**2 + 1 / SY**2) ** -0.5
    assert_mc_close(draws.mean(0), ref[0], torch.full((3,), sd / 20000**0.5), what="PoE draw mean")
    assert_mc_close(draws.std(0), torch.full((3,), sd), torch.full((3,), sd / (2 * 20000) ** 0.5), what="PoE draw sd")


def test_separate_encoders_are_picked_by_subset_and_mixtures_average(_float64):
    qx, qy = experts()
    joint = Normal(var=["z"], cond_var=["x", "y"], loc="x", scale=1.0, name="q")
    d = rows()
    assert select_encoder([joint, qx, qy], ["y", "x"]) is joint
    torch.testing.assert_close(infer_latent([joint, qx, qy], {"y": d["y"]})["z"], d["y"])
    moe = MixtureOfNormal([qx, qy], weights=[1.0, 3.0], name="q")
    torch.testing.assert_close(infer_latent(moe, d)["z"], 0.25 * d["x"] + 0.75 * d["y"])
    torch.testing.assert_close(infer_latent(moe, {"x": d["x"]})["z"], d["x"])


def test_cross_generation_decodes_the_latent_mean(_float64):
    qx, qy = experts()
    q = ProductOfNormal([qx, qy], name="q", features_shape=[3])
    w, c = torch.randn(3, 2, generator=torch.Generator().manual_seed(1)), torch.tensor([1.0, -1.0])

    class Linear(Normal):  # p(v|z) = N(z W + c, 1)
        def __init__(self):
            super().__init__(var=["v"], cond_var=["z"], name="p")

        def forward(self, z):
            return {"loc": z @ w + c, "scale": torch.ones(z.shape[0], 2)}

    d = rows()
    generated = cross_generate(q, Linear(), {"x": d["x"]})
    torch.testing.assert_close(generated, (d["x"] / SX**2 / (1 + 1 / SX**2)) @ w + c)
    assert cross_generate(q, Linear(), {"x": d["x"]}, sample=True).shape == (5, 2)


def test_cross_generation_leaves_the_target_modality_out(_float64):
    """With y in x_dict, cross_generate(..., p(y|z), ...) inferred z from x and y: a reconstruction (0 below), not
    a generation from x. Closed forms: the product N(0,1) N(x, SX^2) has mean (x / SX^2) / (1 + 1 / SX^2); the
    mixture's mean given x alone is x; the separate encoder q(z|x) is picked over q(z|x,y)."""
    qx, qy = experts()
    p_y = Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0, name="p")
    d = rows()
    from_x = d["x"] / SX**2 / (1 + 1 / SX**2)
    torch.testing.assert_close(cross_generate(ProductOfNormal([qx, qy], name="q", features_shape=[3]), p_y, d), from_x)
    torch.testing.assert_close(cross_generate(MixtureOfNormal([qx, qy], name="q"), p_y, d), d["x"])
    joint = Normal(var=["z"], cond_var=["x", "y"], loc="y", scale=1.0, name="q")
    torch.testing.assert_close(cross_generate([joint, qx, qy], p_y, d), d["x"])
    with pytest.raises(ValueError, match=r"generates y from the other modalities \(x\), but x_dict holds only y"):
        cross_generate([joint, qx, qy], p_y, {"y": d["y"]})


def test_coherence_agrees_with_scikit_learn_scores():
    g = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    feats = g.normal(size=(120, 4)) + labels[:, None] * 1.5
    clf = LogisticRegression().fit(feats[::2], labels[::2])
    test, target = torch.as_tensor(feats[1::2]), torch.as_tensor(labels[1::2])
    assert coherence(test, target, clf) == pytest.approx(clf.score(feats[1::2], labels[1::2]))
    one_hot = torch.nn.functional.one_hot(target, 3)
    assert coherence(test, one_hot, lambda s: clf.predict_proba(s.numpy())) == pytest.approx(
        clf.score(feats[1::2], labels[1::2]))
    assert coherence(one_hot.float(), target) == 1.0  # generated labels are judged by their argmax
    with pytest.raises(ValueError, match="60 generated samples but 59 target labels"):
        coherence(test, target[:59], clf)
    with pytest.raises(TypeError, match="predict"):
        coherence(test, target, classifier=3)


def test_bad_inputs_are_named():
    qx, qy = experts()
    q = ProductOfNormal([qx, qy], name="q", features_shape=[3])
    with pytest.raises(ValueError, match="needs at least one of the modalities x, y; given w"):
        infer_latent(q, {"w": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="disagree on the batch size .x has 4, y has 3 rows"):
        infer_latent(q, {"x": torch.zeros(4, 3), "y": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"no encoder infers z from exactly x, y; the encoders are q\(z\|x\), q\(z"):
        infer_latent([qx, qy], {"x": torch.zeros(2, 3), "y": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="infer different variables"):
        infer_latent([qx, Normal(var=["u"], cond_var=["y"], loc="y", scale=1.0)], {"x": torch.zeros(2, 3)})
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        infer_latent(q, {"x": [[0.0, 0.0, 0.0], [0.0]]})
    with pytest.raises(ValueError, match="cross_generate .p\\(v\\|z,c\\). needs c"):
        cross_generate(q, Normal(var=["v"], cond_var=["z", "c"], loc="z", scale=1.0), {"x": torch.zeros(2, 3)})


def test_mvae_random_subsets_are_drawn_uniformly():
    mvae = load_example("mvae")
    pick = mvae.RandomSubsets([Parameter("a"), Parameter("b"), Parameter("c")], n=2)
    torch.manual_seed(0)
    values = [pick.eval({"a": 1.0, "b": 10.0, "c": 100.0}).item() for _ in range(3000)]
    counts = [values.count(v) for v in (11.0, 101.0, 110.0)]
    assert sum(counts) == 3000  # always two different terms
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over the three pairs (false alarm 0.1 %)
    with pytest.raises(ValueError, match="n must be between 1 and 3"):
        mvae.RandomSubsets([Parameter("a"), Parameter("b"), Parameter("c")], n=4)


def test_mvae_with_three_modalities_adds_random_subset_elbos():
    spec = {"x": (4, "bernoulli"), "s": (3, "poisson"), "y": (2, "categorical")}
    mm = load_example("mvae").build(spec, 2, 8, random_subsets=1)
    text = str(mm.model.loss_cls)
    assert "random 1 of {" in text and text.count("KL[") == 4 + 3  # joint + 3 singles + 3 pairs to pick from
    g = torch.Generator().manual_seed(0)
    data = {"x": torch.rand(6, 4, generator=g).round(), "s": torch.poisson(torch.ones(6, 3), generator=g),
            "y": torch.eye(2)[torch.tensor([0, 1, 0, 1, 0, 1])]}
    assert torch.isfinite(mm.model.train(data))


# ------------------------------------------------------------------ learning on image + speech pairs
SPEC = {"x": (784, "bernoulli"), "s": (2400, "poisson")}


@pytest.fixture(scope="module")
def pairs(shared_data):
    """SERKET's 3,000 pairs: the first 2,000 to train, the last 1,000 to test; judges fitted on real data."""
    d = np.load(shared_data("serket/mnist3000.npz"))  # tests/conftest.py: skipped without ../shared
    x, s, y = (torch.as_tensor(d[k]) for k in ("image", "modality2", "label"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def judge(features):
        return make_pipeline(PCA(30, random_state=0), LogisticRegression(max_iter=500)).fit(features, y[:2000].numpy())

    judges = {"x": judge(x[:2000].numpy()), "s": judge(s[:2000].log1p().numpy())}
    yield {"x": x[:2000], "s": s[:2000]}, {"x": x[2000:], "s": s[2000:]}, y[2000:], judges
    torch.set_num_threads(threads)


def learned(name, pairs, epochs, hidden, seed=0, **kwargs):
    """Train the example's model on the pairs; return coherence both ways and latent agreement."""
    train, test, labels, judges = pairs
    example = load_example(name)
    shared = load_example("_multimodal")
    torch.manual_seed(seed)
    mm = example.build(SPEC, 8, hidden, lr=3e-3, **kwargs)
    shared.fit(mm.model, train, epochs, 100, seed=seed)
    speech = cross_generate(mm.encoders, mm.decoders["s"], {"x": test["x"]})  # Poisson rates
    image = cross_generate(mm.encoders, mm.decoders["x"], {"s": test["s"]})  # pixel probabilities
    return {
        "image_to_speech": coherence(speech, labels, lambda r: judges["s"].predict(r.log1p().numpy())),
        "speech_to_image": coherence(image, labels, judges["x"]),
        "ratio_x": shared.latent_agreement(mm.encoders, test, "x"),
        "ratio_s": shared.latent_agreement(mm.encoders, test, "s"),
    }


def test_mmvae_on_image_speech_pairs_infers_and_generates_across_modalities(pairs):
    m = learned("mmvae", pairs, epochs=12, hidden=64)  # seed 0: 0.49, 0.56, 0.33, 0.29
    # the latent from one modality lies closer to its own row's joint latent than to another's
    assert m["ratio_x"] < 0.6 and m["ratio_s"] < 0.6  # chance 1
    # cross-generated samples carry the digit: chance 0.1 for ten balanced classes
    assert m["image_to_speech"] > 0.3 and m["speech_to_image"] > 0.3


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, floor, seeds", [
    ("jmvae", {}, 0.5, [0]),  # seed 0: 0.72 image->speech, 0.88 speech->image (seeds 1, 2: 0.67 / 0.88, 0.73 / 0.88)
    # the product of experts is seed-fragile here: one direction of a seed falls to 0.22-0.33 (image->speech 0.333,
    # 0.570, 0.617, 0.691, 0.616 and speech->image 0.646, 0.224, 0.317, 0.584, 0.641 at seeds 0-4, 2026-12-05), so
    # the mean of three seeds is judged; unweighted the speech expert dominates (0.25 image->speech)
    ("mvae", {"weights": {"x": 10.0}}, 0.35, [0, 1, 2]),
    ("mmvae", {}, 0.5, [0]),  # seed 0: 0.79, 0.86
])
def test_each_multimodal_vae_on_image_speech_pairs(pairs, name, kwargs, floor, seeds):
    runs = [learned(name, pairs, epochs=15, hidden=128, seed=seed, **kwargs) for seed in seeds]
    for m in runs:
        assert m["ratio_x"] < 0.9 and m["ratio_s"] < 0.9
    for direction in ("image_to_speech", "speech_to_image"):  # chance 0.1
        assert np.mean([m[direction] for m in runs]) > floor, [m[direction] for m in runs]


def test_coherence_reads_generated_class_indices():
    """Generated labels given as indices (N,) are indices (reshaped to (N, 1) they were read as scores, argmax 0)."""
    assert coherence(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1])) == 1.0
    assert coherence(np.array([2, 0, 1]), np.array([2, 1, 1])) == pytest.approx(2 / 3)
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert coherence(scores, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_coherence_reads_a_column_as_class_indices():
    """A column (N, 1) holds labels: coherence(gen, y.reshape(-1, 1)) was 0.333 (argmax of one column = 0) where
    scikit-learn's accuracy is 1.0; a column of fractions (one class's probability) is refused."""
    from sklearn.metrics import accuracy_score

    gen = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    y = torch.tensor([0, 1, 1])
    ref = accuracy_score(y.numpy(), [0, 1, 1])
    assert coherence(gen, y.reshape(-1, 1)) == pytest.approx(ref) == 1.0
    assert coherence(torch.tensor([[0], [1], [0]]), y) == pytest.approx(accuracy_score(y.numpy(), [0, 1, 0]))
    assert coherence(gen, y, lambda s: s.argmax(1, keepdim=True)) == pytest.approx(ref)
    with pytest.raises(ValueError, match=r"target_labels is one column of non-integer values"):
        coherence(gen, torch.tensor([[0.2], [0.9], [0.7]]))
    # one class's probabilities as a vector (N,) were compared with the labels: 0.0, silently
    with pytest.raises(ValueError, match=r"generated holds non-integer values in one dimension \(N,\)"):
        coherence(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match=r"classifier's output holds non-integer values|holds non-integer values"):
        coherence(torch.randn(3, 5), torch.tensor([1, 0, 1]), classifier=lambda g: torch.sigmoid(g[:, 0]))
    assert coherence(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1, 0, 1])) == 1.0  # whole numbers are indices


def test_coherence_of_no_samples_is_named():
    from kizuna.inference import coherence

    with pytest.raises(ValueError, match="coherence: no generated samples"):
        coherence(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_coherence_refuses_non_finite_scores_and_mixtures_name_their_experts():
    """A row of NaN scores was read as class 0 (numpy's argmax), so a diverged decoder scored coherence 1.0; a
    mixture whose experts disagree on the latent's shape failed with a raw broadcast error in sample / infer_latent;
    a learnable weight driven below 0 made every log-density NaN, named nowhere."""
    from torch import nn

    from kizuna.inference import coherence

    with pytest.raises(ValueError, match=r"^coherence: generated has non-finite values in 2 row\(s\) \(first: row 0\)"):
        coherence(torch.tensor([[float("nan"), 0.0], [float("nan"), 0.0]]), torch.tensor([0, 0]))
    qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
    m = MixtureOfNormal([qx, qy])
    given = {"x": torch.randn(4, 2), "y": torch.randn(4, 3)}
    for call in (lambda: infer_latent(m, given), lambda: m.sample(given)):
        with pytest.raises(ValueError, match=r"the experts disagree on the shape of z: \[\(2,\), \(3,\)\]"):
            call()
    learnt = MixtureOfNormal([qx, qy], weights=nn.Parameter(torch.tensor([1.0, 1.0])))
    with torch.no_grad():
        learnt.weights[1] = -0.05
    with pytest.raises(ValueError, match=r"the learnable weights must stay positive and finite, got \[1.0, -0.05"):
        learnt.get_log_prob({"x": torch.randn(4, 2), "y": torch.randn(4, 2), "z": torch.randn(4, 2)})


def test_coherence_names_a_single_number():
    for generated in (torch.tensor(1.0), np.float64(1.0), 3):
        with pytest.raises(ValueError, match="coherence: generated must have a leading row dimension"):
            coherence(generated, torch.tensor([1]))

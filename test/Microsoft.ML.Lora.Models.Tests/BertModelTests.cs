using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

[TestClass]
public sealed class BertModelTests
{
    [TestMethod]
    public void StateDict_OneLayerWithPooler_HasExactlyTheHuggingFaceKeys()
    {
        using var model = TestData.TinyModel(seed: 1, pooler: true, layers: 1);
        string[] expected =
        [
            "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight",
            "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias",
            "encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.query.bias",
            "encoder.layer.0.attention.self.key.weight", "encoder.layer.0.attention.self.key.bias",
            "encoder.layer.0.attention.self.value.weight", "encoder.layer.0.attention.self.value.bias",
            "encoder.layer.0.attention.output.dense.weight", "encoder.layer.0.attention.output.dense.bias",
            "encoder.layer.0.attention.output.LayerNorm.weight", "encoder.layer.0.attention.output.LayerNorm.bias",
            "encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.intermediate.dense.bias",
            "encoder.layer.0.output.dense.weight", "encoder.layer.0.output.dense.bias",
            "encoder.layer.0.output.LayerNorm.weight", "encoder.layer.0.output.LayerNorm.bias",
            "pooler.dense.weight", "pooler.dense.bias",
        ];
        CollectionAssert.AreEquivalent(expected, model.state_dict().Keys.ToArray());
        CollectionAssert.AreEqual(new long[] { 32, 16 }, model.state_dict()["encoder.layer.0.intermediate.dense.weight"].shape);
    }

    [TestMethod]
    public void NamedModules_LinearSlots_AreModuleOfTensorTensorFieldsNamedLikeTheModule()
    {
        using var model = TestData.TinyModel(seed: 1, pooler: true, layers: 1);
        var linear = model.named_modules().Where(m => m.module is TorchSharp.Modules.Linear).Select(m => m.name).ToArray();
        CollectionAssert.AreEquivalent(
            new[]
            {
                "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key", "encoder.layer.0.attention.self.value",
                "encoder.layer.0.attention.output.dense", "encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense", "pooler.dense",
            },
            linear);

        // Injection swaps the field whose name is the module's last path segment; check each parent has such a field.
        foreach (string path in linear)
        {
            string parentPath = path[..path.LastIndexOf('.')];
            string name = path[(path.LastIndexOf('.') + 1)..];
            var parent = model.named_modules().Single(m => m.name == parentPath).module;
            var field = parent.GetType().GetField(name, System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Public);
            Assert.IsNotNull(field, $"{parent.GetType().Name} has no field '{name}'");
            Assert.AreEqual(typeof(nn.Module<Tensor, Tensor>), field.FieldType, path);
            Assert.IsFalse(field.IsInitOnly, $"{path} must be assignable");
        }
    }

    [TestMethod]
    [DataRow("gelu")]
    [DataRow("gelu_new")]
    [DataRow("relu")]
    public void Forward_TinyModel_EqualsReferenceComputedFromStateDict(string act)
    {
        using var scope = NewDisposeScope();
        using var model = TestData.TinyModel(seed: 2, act: act);
        var (ids, mask, types) = TestData.TinyBatch(seed: 3);
        var actual = model.forward(ids, mask, types);
        var expected = Reference(model.state_dict(), model.Config, ids, mask, types);
        CollectionAssert.AreEqual(new long[] { 3, 7, 16 }, actual.shape);

        // Same float32 math in another order (explicit softmax vs fused attention): agreement to ~1e-6; 1e-5 leaves margin.
        double diff = TestData.MaxAbsDiff(actual, expected);
        Assert.IsTrue(diff < 1e-5, $"max |Δ| = {diff}");
    }

    [TestMethod]
    public void Forward_PaddedRow_EqualsSameRowUnpadded()
    {
        using var scope = NewDisposeScope();
        using var model = TestData.TinyModel(seed: 4);
        var (ids, mask, types) = TestData.TinyBatch(seed: 5);
        var batched = model.forward(ids, mask, types);
        var alone = model.forward(ids[1..2, ..4], mask[1..2, ..4], types[1..2, ..4]);

        // Padding is masked out, so the real tokens of row 1 see the same keys as alone; float32 reduction order may differ.
        double diff = TestData.MaxAbsDiff(batched[1..2, ..4], alone);
        Assert.IsTrue(diff < 1e-5, $"max |Δ| = {diff}");
    }

    [TestMethod]
    public void Forward_TrainMode_AppliesDropout_EvalModeIsDeterministic()
    {
        using var scope = NewDisposeScope();
        using var model = TestData.TinyModel(seed: 6);
        var (ids, mask, types) = TestData.TinyBatch(seed: 7);
        var a = model.forward(ids, mask, types);
        var b = model.forward(ids, mask, types);
        Assert.AreEqual(0.0, TestData.MaxAbsDiff(a, b));
        model.train();
        torch.manual_seed(1);
        var c = model.forward(ids, mask, types);
        Assert.IsTrue(TestData.MaxAbsDiff(a, c) > 1e-3, "dropout (p = 0.1) should change the output in training mode");
    }

    [TestMethod]
    public void Forward_BadShapes_ThrowNamingTheInput()
    {
        using var scope = NewDisposeScope();
        using var model = TestData.TinyModel(seed: 8);
        var ids = zeros([2, 5], dtype: ScalarType.Int64);
        var ok = ones([2, 5], dtype: ScalarType.Int64);
        var wrong = ones([2, 4], dtype: ScalarType.Int64);
        Assert.AreEqual("attention_mask", Assert.ThrowsExactly<ArgumentException>(() => model.forward(ids, wrong, ok)).ParamName);
        Assert.AreEqual("token_type_ids", Assert.ThrowsExactly<ArgumentException>(() => model.forward(ids, ok, wrong)).ParamName);
        Assert.AreEqual("input_ids", Assert.ThrowsExactly<ArgumentException>(() => model.forward(zeros([5], dtype: ScalarType.Int64), ok, ok)).ParamName);
        var tooLong = zeros([1, 33], dtype: ScalarType.Int64);
        var e = Assert.ThrowsExactly<ArgumentException>(() => model.forward(tooLong, tooLong, tooLong));
        Assert.AreEqual("input_ids", e.ParamName);
        StringAssert.Contains(e.Message, "max_position_embeddings");
    }

    [TestMethod]
    public void Config_IsACopy_ChangingItDoesNotAffectTheModel()
    {
        using var model = TestData.TinyModel(seed: 12);
        var config = model.Config;
        config.HiddenSize = 999;
        Assert.AreEqual(16, model.Config.HiddenSize);
    }

    [TestMethod]
    public void PoolerOutput_WithoutPooler_ThrowsInvalidOperation()
    {
        using var scope = NewDisposeScope();
        using var model = TestData.TinyModel(seed: 9);
        Assert.ThrowsExactly<InvalidOperationException>(() => model.PoolerOutput(zeros([1, 2, 16])));
    }

    [TestMethod]
    public void PoolerOutput_EqualsTanhOfDenseOnClsToken()
    {
        using var scope = NewDisposeScope();
        using var model = TestData.TinyModel(seed: 10, pooler: true);
        var (ids, mask, types) = TestData.TinyBatch(seed: 11);
        var hidden = model.forward(ids, mask, types);
        var sd = model.state_dict();
        var expected = nn.functional.linear(hidden[.., 0], sd["pooler.dense.weight"], sd["pooler.dense.bias"]).tanh();
        Assert.IsTrue(TestData.MaxAbsDiff(model.PoolerOutput(hidden), expected) < 1e-6);
    }

    /// <summary>BERT written out op by op from the state dict (explicit softmax attention, activation formulas).</summary>
    private static Tensor Reference(Dictionary<string, Tensor> sd, BertConfig c, Tensor ids, Tensor mask, Tensor types)
    {
        long b = ids.shape[0], t = ids.shape[1];
        int h = c.NumAttentionHeads, d = c.HeadSize;
        Tensor Ln(Tensor x, string p) => nn.functional.layer_norm(x, [c.HiddenSize], sd[p + ".weight"], sd[p + ".bias"], c.LayerNormEps);
        Tensor Lin(Tensor x, string p) => x.matmul(sd[p + ".weight"].t()).add(sd[p + ".bias"]);
        Tensor Act(Tensor x) => c.HiddenAct switch
        {
            "gelu" => x.mul(0.5).mul(x.div(Math.Sqrt(2.0)).erf().add(1.0)),
            "gelu_new" => x.mul(0.5).mul(x.add(x.pow(3).mul(0.044715)).mul(Math.Sqrt(2.0 / Math.PI)).tanh().add(1.0)),
            _ => x.clamp_min(0.0),
        };

        var x = sd["embeddings.word_embeddings.weight"].index_select(0, ids.flatten()).view(b, t, -1)
            .add(sd["embeddings.token_type_embeddings.weight"].index_select(0, types.flatten()).view(b, t, -1))
            .add(sd["embeddings.position_embeddings.weight"][..(int)t].unsqueeze(0));
        x = Ln(x, "embeddings.LayerNorm");
        var additive = mask.to_type(ScalarType.Float32).neg().add(1.0).mul(-1e9).view(b, 1, 1, t);
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"encoder.layer.{i}.";
            Tensor Split(Tensor y) => y.view(b, t, h, d).transpose(1, 2);
            var q = Split(Lin(x, p + "attention.self.query"));
            var k = Split(Lin(x, p + "attention.self.key"));
            var v = Split(Lin(x, p + "attention.self.value"));
            var scores = q.matmul(k.transpose(-1, -2)).div(Math.Sqrt(d)).add(additive);
            var context = scores.softmax(-1).matmul(v).transpose(1, 2).reshape(b, t, h * d);
            var attended = Ln(Lin(context, p + "attention.output.dense").add(x), p + "attention.output.LayerNorm");
            var inter = Act(Lin(attended, p + "intermediate.dense"));
            x = Ln(Lin(inter, p + "output.dense").add(attended), p + "output.LayerNorm");
        }

        return x;
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

[TestClass]
public sealed class BertForSequenceClassificationTests
{
    [TestMethod]
    public void Forward_ThreeLabels_ReturnsLogitsEqualToClassifierOfMeanPool()
    {
        using var scope = NewDisposeScope();
        var bert = TestData.TinyModel(seed: 20);
        using var model = new BertForSequenceClassification(bert, numLabels: 3);
        model.eval();
        var (ids, mask, types) = TestData.TinyBatch(seed: 21);
        var logits = model.forward(ids, mask, types);
        CollectionAssert.AreEqual(new long[] { 3, 3 }, logits.shape);
        var sd = model.state_dict();
        var pooled = Pooling.Pool(bert.forward(ids, mask, types), mask, PoolingMode.Mean, false);
        var expected = nn.functional.linear(pooled, sd["classifier.weight"], sd["classifier.bias"]);
        Assert.IsTrue(TestData.MaxAbsDiff(logits, expected) < 1e-6);
        Assert.IsTrue(sd.ContainsKey("bert.encoder.layer.1.attention.self.query.weight"));
        Assert.AreSame(bert, model.Bert);
    }

    [TestMethod]
    public void Forward_ClsWithPooler_UsesPoolerOutput_RegressionHasOneOutput()
    {
        using var scope = NewDisposeScope();
        var bert = TestData.TinyModel(seed: 22, pooler: true);
        using var model = new BertForSequenceClassification(bert, numLabels: 1, PoolingMode.Cls, dropout: 0.0);
        model.eval();
        var (ids, mask, types) = TestData.TinyBatch(seed: 23);
        var value = model.forward(ids, mask, types);
        CollectionAssert.AreEqual(new long[] { 3, 1 }, value.shape);
        var sd = model.state_dict();
        var expected = nn.functional.linear(bert.PoolerOutput(bert.forward(ids, mask, types)), sd["classifier.weight"], sd["classifier.bias"]);
        Assert.IsTrue(TestData.MaxAbsDiff(value, expected) < 1e-6);
    }

    [TestMethod]
    public void Forward_ClsWithoutPooler_UsesClsHiddenState()
    {
        using var scope = NewDisposeScope();
        var bert = TestData.TinyModel(seed: 27);
        using var model = new BertForSequenceClassification(bert, numLabels: 2, PoolingMode.Cls);
        model.eval();
        var (ids, mask, types) = TestData.TinyBatch(seed: 28);
        var sd = model.state_dict();
        var expected = nn.functional.linear(bert.forward(ids, mask, types)[.., 0], sd["classifier.weight"], sd["classifier.bias"]);
        Assert.IsTrue(TestData.MaxAbsDiff(model.forward(ids, mask, types), expected) < 1e-6);
    }

    [TestMethod]
    public void Backward_OneStep_ReducesLossAndReachesClassifierAndEncoder()
    {
        using var scope = NewDisposeScope();
        using var model = new BertForSequenceClassification(TestData.TinyModel(seed: 24), numLabels: 2, dropout: 0.0);
        model.train();
        var (ids, mask, types) = TestData.TinyBatch(seed: 25);
        var labels = tensor(new long[] { 0, 1, 1 });
        using var optimizer = optim.SGD(model.parameters(), 0.1);
        var loss0 = nn.functional.cross_entropy(model.forward(ids, mask, types), labels);
        optimizer.zero_grad();
        loss0.backward();
        // Exactly BERT's Hugging Face keys under "bert." (no pooler here) and the classifier: 5 embedding + 2 × 16 layer
        // tensors + 2.
        string[] perLayer = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"];
        var expectedKeys = new[] { "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias" }
            .Select(k => "bert.embeddings." + k)
            .Concat(Enumerable.Range(0, 2).SelectMany(l => perLayer.SelectMany(m => new[] { $"bert.encoder.layer.{l}.{m}.weight", $"bert.encoder.layer.{l}.{m}.bias" })))
            .Concat(["classifier.weight", "classifier.bias"])
            .ToArray();
        Assert.HasCount(39, expectedKeys);
        CollectionAssert.AreEquivalent(expectedKeys, model.state_dict().Keys.ToArray());
        var named = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.IsTrue(named["classifier.weight"].grad!.abs().sum().item<float>() > 0);
        Assert.IsTrue(named["bert.encoder.layer.0.attention.self.query.weight"].grad!.abs().sum().item<float>() > 0);
        optimizer.step();
        var loss1 = nn.functional.cross_entropy(model.forward(ids, mask, types), labels);
        Assert.IsTrue(loss1.item<float>() < loss0.item<float>(), $"{loss1.item<float>()} !< {loss0.item<float>()}");
    }

    [TestMethod]
    public void Constructor_BadArguments_Throw()
    {
        using var bert = TestData.TinyModel(seed: 26);
        Assert.AreEqual("numLabels", Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new BertForSequenceClassification(bert, 0)).ParamName);
        Assert.AreEqual("dropout", Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new BertForSequenceClassification(bert, 2, dropout: 1.0)).ParamName);
    }
}

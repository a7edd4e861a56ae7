using Microsoft.ML.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>LoRA injection (Microsoft.ML.Lora.TorchSharp) into the BERT models: the real MiniLM and tiny random BERTs.</summary>
[TestClass]
public sealed class LoraInjectionTests
{
    private static LoadedPretrainedModel miniLm = null!;

    [ClassInitialize]
    public static void Load(TestContext context) => miniLm = PretrainedModel.MiniLmL6V2.Load();

    [ClassCleanup]
    public static void Cleanup() => miniLm?.Dispose();

    /// <summary>A fresh copy of MiniLM (same weights), so each test can inject and train without affecting others.</summary>
    private static BertModel FreshMiniLm()
    {
        var model = new BertModel(miniLm.Model.Config, addPoolingLayer: true);
        WeightsLoader.Load(model, miniLm.Model.BaseStateDict(), "MiniLM copy");
        model.eval();
        return model;
    }

    [TestMethod]
    public void Inject_QueryValueRank8_OnMiniLm_Adds73728Parameters_OutputUnchanged()
    {
        using var scope = NewDisposeScope();
        using var model = FreshMiniLm();
        var batch = miniLm.Tokenizer.Encode(MiniLmTests.Sentences[..6], null, 64);
        var (ids, mask, types) = batch.ToTensors();
        Tensor before;
        using (no_grad())
        {
            before = model.forward(ids, mask, types);
        }

        long encoderParameters = model.parameters().Sum(p => p.numel());
        var replaced = lora.inject_adapter_in_model(new LoraConfig { r = 8, lora_alpha = 16, target_modules = ["query", "value"] }, model);
        Assert.AreEqual(12, replaced.Count);
        CollectionAssert.Contains(replaced.ToList(), "encoder.layer.5.attention.self.value");

        long loraParameters = model.named_parameters().Where(p => p.name.Contains(".lora_", StringComparison.Ordinal)).Sum(p => p.parameter.numel());
        long trainable = model.parameters().Where(p => p.requires_grad).Sum(p => p.numel());
        Assert.AreEqual(73_728L, loraParameters, "6 layers × 2 modules × (8×384 + 384×8)");
        Assert.AreEqual(73_728L, trainable);
        double percent = 100.0 * loraParameters / encoderParameters;
        Console.WriteLine($"LoRA r=8 on query,value of MiniLM: {loraParameters} parameters = {percent:F3}% of the encoder's {encoderParameters}");
        Assert.AreEqual(0.32, percent, 0.01);

        // lora_B starts at zero, so the adapted model computes exactly what the base model computed.
        model.eval();
        using (no_grad())
        {
            var after = model.forward(ids, mask, types);
            Assert.AreEqual(0.0, TestData.MaxAbsDiff(before, after));
        }

        // Unmerged LoRA path (LoRA layers in training mode, the rest of the model in eval so no dropout): still identical.
        foreach (var layer in model.modules().OfType<ILoraLayer>().Cast<nn.Module>())
        {
            layer.train();
            Assert.IsFalse(((ILoraLayer)layer).merged);
        }

        using (no_grad())
        {
            var unmerged = model.forward(ids, mask, types);
            Assert.AreEqual(0.0, TestData.MaxAbsDiff(before, unmerged));
        }
    }

    [TestMethod]
    public void OptimizerStep_LoraOnMiniLmClassifier_ChangesOnlyLoraAndHeadParameters()
    {
        using var scope = NewDisposeScope();
        using var model = new BertForSequenceClassification(FreshMiniLm(), numLabels: 2);
        var config = new LoraConfig { r = 8, lora_alpha = 16, target_modules = ["query", "value"], modules_to_save = ["classifier"] };
        lora.inject_adapter_in_model(config, model);
        var before = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.IsTrue(trainable.All(n => n.Contains(".lora_", StringComparison.Ordinal) || n.StartsWith("classifier.", StringComparison.Ordinal)), string.Join(", ", trainable));

        model.train();
        var batch = miniLm.Tokenizer.Encode(["great movie", "terrible film", "I loved it", "I hated it"], null, 32);
        var (ids, mask, types) = batch.ToTensors();
        using var optimizer = optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-3);
        optimizer.zero_grad();
        var loss = nn.functional.cross_entropy(model.forward(ids, mask, types), tensor(new long[] { 1, 0, 1, 0 }));
        loss.backward();
        optimizer.step();

        var changed = model.named_parameters()
            .Where(p => !before[p.name].eq(p.parameter.detach()).all().item<bool>())
            .Select(p => p.name)
            .ToList();
        var unexpected = changed.Where(n => !n.Contains(".lora_", StringComparison.Ordinal) && !n.StartsWith("classifier.", StringComparison.Ordinal)).ToList();
        Assert.AreEqual(0, unexpected.Count, "base parameters changed: " + string.Join(", ", unexpected));
        CollectionAssert.Contains(changed, "classifier.weight");
        CollectionAssert.Contains(changed, "bert.encoder.layer.0.attention.self.query.lora_B");
        CollectionAssert.Contains(changed, "bert.encoder.layer.5.attention.self.value.lora_B");
    }

    [TestMethod]
    public void Inject_PathQualifiedTarget_ReplacesOnlyAttentionOutputDense()
    {
        using var scope = NewDisposeScope();
        using var model = TestData.TinyModel(seed: 30, pooler: true);
        var (ids, mask, types) = TestData.TinyBatch(seed: 31);
        var before = model.forward(ids, mask, types);
        var replaced = lora.inject_adapter_in_model(new LoraConfig { r = 4, target_modules = ["attention.output.dense"] }, model);
        CollectionAssert.AreEqual(
            new[] { "encoder.layer.0.attention.output.dense", "encoder.layer.1.attention.output.dense" },
            replaced.ToArray());
        var keys = model.state_dict().Keys.ToList();
        CollectionAssert.Contains(keys, "encoder.layer.1.attention.output.dense.lora_A");
        Assert.IsFalse(keys.Any(k => k.Contains("intermediate.dense.lora_", StringComparison.Ordinal) || k.Contains("pooler.dense.lora_", StringComparison.Ordinal)));

        // The base keys are unchanged, so the adapted model still exports (and the export has no LoRA tensors).
        CollectionAssert.AreEquivalent(
            keys.Where(k => !k.Contains(".lora_", StringComparison.Ordinal)).ToArray(),
            model.BaseStateDict().Keys.ToArray());
        model.eval();
        Assert.AreEqual(0.0, TestData.MaxAbsDiff(before, model.forward(ids, mask, types)));
    }

    [TestMethod]
    public void Inject_Dense_ReplacesAllThreeDensesPerLayerAndPooler_ForwardUsesLoraLayers()
    {
        using var scope = NewDisposeScope();
        using var model = TestData.TinyModel(seed: 32, pooler: true);
        var replaced = lora.inject_adapter_in_model(new LoraConfig { r = 2, target_modules = ["dense"] }, model);
        Assert.AreEqual(7, replaced.Count, string.Join(", ", replaced));

        // Make lora_B non-zero: the output must change, which proves forward reads the swapped fields.
        var (ids, mask, types) = TestData.TinyBatch(seed: 33);
        model.eval();
        var before = model.forward(ids, mask, types);
        model.train();
        using (no_grad())
        {
            foreach (var (name, p) in model.named_parameters().Where(p => p.name.EndsWith("lora_B", StringComparison.Ordinal)))
            {
                p.fill_(0.05);
            }
        }

        model.eval();
        Assert.IsTrue(TestData.MaxAbsDiff(before, model.forward(ids, mask, types)) > 1e-3);
    }

    [TestMethod]
    public void BaseStateDict_AfterEvalMergesRandomAdapter_EqualsBaseWeightsAndFingerprint()
    {
        // loralib #190 at the model level: eval() merges ΔW into the weights, but the exported base and its fingerprint
        // are those of the base model, bit for bit.
        using var scope = NewDisposeScope();
        using var model = TestData.TinyModel(seed: 32, pooler: true);
        var baseline = model.BaseStateDict().ToDictionary(p => p.Key, p => p.Value.detach().clone());
        var fingerprint = WeightsFingerprint.Compute(model.BaseStateDict());
        lora.inject_adapter_in_model(new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["query", "value"] }, model);
        torch.manual_seed(33);
        using (no_grad())
        {
            foreach (var (name, p) in model.named_parameters().Where(p => p.name.EndsWith("lora_B", StringComparison.Ordinal)))
            {
                nn.init.normal_(p, 0, 0.5);
            }
        }

        model.eval();
        var merged = model.named_modules().Select(m => m.module).OfType<ILoraLayer>().ToList();
        Assert.IsTrue(merged.Count == 4 && merged.All(l => l.merged), "4 LoRA layers, merged by eval()");
        var exported = model.BaseStateDict();
        CollectionAssert.AreEquivalent(baseline.Keys.ToArray(), exported.Keys.ToArray());
        foreach (var (key, value) in baseline)
        {
            Assert.IsTrue(exported[key].Equals(value), $"{key}: bit-identical to the base");
        }

        Assert.AreEqual(fingerprint, WeightsFingerprint.Compute(exported));
    }
}

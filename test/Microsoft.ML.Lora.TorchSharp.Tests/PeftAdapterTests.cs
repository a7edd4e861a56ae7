using System.Text.Json;
using TorchSharp;
using static Microsoft.ML.Lora.Tests.TestUtil;
using static TorchSharp.torch;
using LoraLayer = Microsoft.ML.Lora.Modules.LoraLayer;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class PeftAdapterTests
{
    private const string Q0 = "encoder.layer.0.attention.self.query";
    private const string V0 = "encoder.layer.0.attention.self.value";
    private const string Q1 = "encoder.layer.1.attention.self.query";
    private const string V1 = "encoder.layer.1.attention.self.value";

    /// <summary>adapter_config.json as PEFT 0.20 writes it (sorted keys), plus one key from a future version.</summary>
    private const string Peft020Config = """
        {
          "alora_invocation_tokens": null,
          "alpha_pattern": {
            "layer.1.attention.self.query": 6
          },
          "arrow_config": null,
          "auto_mapping": null,
          "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
          "bias": "none",
          "corda_config": null,
          "ensure_weight_tying": false,
          "eva_config": null,
          "exclude_modules": null,
          "fan_in_fan_out": false,
          "inference_mode": true,
          "init_lora_weights": true,
          "layer_replication": null,
          "layers_pattern": null,
          "layers_to_transform": null,
          "loftq_config": {},
          "lora_alpha": 4,
          "lora_bias": false,
          "lora_dropout": 0.1,
          "megatron_config": null,
          "megatron_core": "megatron.core",
          "modules_to_save": null,
          "peft_type": "LORA",
          "peft_version": "0.20.0",
          "qalora_group_size": 16,
          "r": 2,
          "rank_pattern": {
            "value": 1
          },
          "revision": null,
          "some_future_option": {"enabled": true},
          "target_modules": [
            "value",
            "query"
          ],
          "target_parameters": null,
          "task_type": "FEATURE_EXTRACTION",
          "trainable_token_indices": null,
          "use_dora": false,
          "use_qalora": false,
          "use_rslora": true
        }
        """;

    private static (string key, long[] shape, float[] data)[] HandTensors()
    {
        var list = new List<(string, long[], float[])>();
        var salt = 0;
        foreach (var (path, r) in new[] { (Q0, 2), (V0, 1), (Q1, 2), (V1, 1) })
        {
            list.Add(($"base_model.model.{path}.lora_A.weight", [r, 4], PeftFiles.Values(r * 4, salt++)));
            list.Add(($"base_model.model.{path}.lora_B.weight", [4, r], PeftFiles.Values(4 * r, salt++)));
        }

        return list.ToArray();
    }

    private static string WriteHandAdapter(string config, params (string key, long[] shape, float[] data)[] tensors)
    {
        var dir = PeftFiles.TempDir();
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), config);
        PeftFiles.WriteSafetensors(Path.Combine(dir, "adapter_model.safetensors"), tensors);
        return dir;
    }

    [TestMethod]
    public void Load_HandWrittenPeft020Files_EachModuleComputesBasePlusScaledUpdate()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(40);
        var baseParams = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        var tensors = HandTensors();
        var dir = WriteHandAdapter(Peft020Config, tensors);
        var log = new List<string>();
        try
        {
            var loaded = PeftAdapter.Load(model, dir, log: log.Add);
            CollectionAssert.AreEquivalent(new[] { Q0, V0, Q1, V1 }, loaded.ToArray());
            Assert.IsTrue(log.Any(l => l.Contains("some_future_option", StringComparison.Ordinal)), "the unknown key is reported");
            Assert.AreEqual(1, log.Count, "known PEFT 0.20 keys are not reported: " + string.Join(" | ", log));

            // Scalings by hand: rsLoRA α/√r; rank_pattern "value" → r 1; alpha_pattern gives layer 1's query α 6.
            var expectedScaling = new Dictionary<string, double>
            {
                [Q0] = 4 / Math.Sqrt(2), [V0] = 4 / Math.Sqrt(1), [Q1] = 6 / Math.Sqrt(2), [V1] = 4 / Math.Sqrt(1),
            };
            torch.manual_seed(41);
            var x = randn(3, 5, 4);
            model.eval(); // no dropout (0.1 in the config); merges ΔW into the weight
            foreach (var (path, scaling) in expectedScaling)
            {
                var layer = (LoraLayer)model.Module(path);
                Assert.AreEqual(scaling, layer.scaling, 1e-12, path);
                var a = tensors.Single(t => t.key == $"base_model.model.{path}.lora_A.weight");
                var b = tensors.Single(t => t.key == $"base_model.model.{path}.lora_B.weight");
                var aT = tensor(a.data).reshape(a.shape);
                var bT = tensor(b.data).reshape(b.shape);
                var expected = x.matmul(baseParams[path + ".weight"].t()) + baseParams[path + ".bias"]
                    + x.matmul(aT.t()).matmul(bT.t()) * scaling;
                // float32 merge and matmul order: relative 1e-5 of the output scale.
                Assert.IsTrue(MaxRelativeDifference(layer.forward(x), expected) < 1e-5, $"{path}: {MaxRelativeDifference(layer.forward(x), expected)}");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void SaveLoad_RoundTrip_FreshModelGivesSameForwardAndFilesFollowPeftLayout()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(42);
        var config = new LoraConfig
        {
            r = 4, lora_alpha = 8, use_rslora = true, target_modules = ["query", "value", "word_embeddings"],
            rank_pattern = new Dictionary<string, int> { ["layer.1.attention.self.value"] = 2 }, modules_to_save = ["classifier"],
        };
        lora.inject_adapter_in_model(config, model);
        torch.manual_seed(43);
        foreach (var (name, p) in model.named_parameters())
        {
            if (IsLoraKey(name) || name.StartsWith("classifier", StringComparison.Ordinal))
            {
                Randomize(p);
            }
        }

        var expected = model.forward(MiniBert.Ids()).detach();
        var dir = PeftFiles.TempDir();
        try
        {
            var folder = PeftAdapter.Save(model, dir);
            Assert.AreEqual(dir, folder, "the default adapter goes in the directory itself");
            var weights = Path.Combine(dir, "adapter_model.safetensors");
            using (var header = PeftFiles.ReadHeader(weights))
            {
                var root = header.RootElement;
                Assert.AreEqual("pt", root.GetProperty("__metadata__").GetProperty("format").GetString());
                var keys = root.EnumerateObject().Select(p => p.Name).Where(n => n != "__metadata__").ToList();
                Assert.AreEqual(2 + 8 + 2, keys.Count, string.Join(", ", keys));
                AssertShape(root, $"base_model.model.{Q0}.lora_A.weight", 4, 4);
                AssertShape(root, $"base_model.model.{V1}.lora_A.weight", 2, 4);
                AssertShape(root, $"base_model.model.{V1}.lora_B.weight", 4, 2);
                AssertShape(root, "base_model.model.embeddings.word_embeddings.lora_embedding_A", 4, 11);
                AssertShape(root, "base_model.model.embeddings.word_embeddings.lora_embedding_B", 4, 4);
                AssertShape(root, "base_model.model.classifier.weight", 2, 4);
                AssertShape(root, "base_model.model.classifier.bias", 2);
            }

            var q0A = ((LoraLayer)model.Module(Q0)).lora_A!;
            CollectionAssert.AreEqual(q0A.data<float>().ToArray(), PeftFiles.ReadFloats(weights, $"base_model.model.{Q0}.lora_A.weight"),
                "the bytes are the tensor's float32 values, row-major");

            using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json"))))
            {
                var names = json.RootElement.EnumerateObject().Select(p => p.Name).ToList();
                CollectionAssert.AreEqual(names.OrderBy(n => n, StringComparer.Ordinal).ToList(), names, "sorted keys");
                Assert.AreEqual("LORA", json.RootElement.GetProperty("peft_type").GetString());
                Assert.IsTrue(json.RootElement.GetProperty("use_rslora").GetBoolean());
                Assert.AreEqual(2, json.RootElement.GetProperty("rank_pattern").GetProperty("layer.1.attention.self.value").GetInt32());
                Assert.AreEqual(8, json.RootElement.GetProperty("lora_alpha").GetInt32());
            }

            var fresh = MiniBert.Create(42);
            var loaded = PeftAdapter.Load(fresh, dir, log: _ => { });
            Assert.AreEqual(5, loaded.Count);
            AssertExactlyEqual(fresh.forward(MiniBert.Ids()), expected, "same base, same factors, same classifier");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void SaveLoad_NamedAdapter_UsesSubfolderAndKeepsName()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(44);
        lora.add_adapter(model, "fr", new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["query"] });
        Randomize(((LoraLayer)model.Module(Q1)).get_lora_B("fr"));
        var expected = model.forward(MiniBert.Ids()).detach();
        var dir = PeftFiles.TempDir();
        try
        {
            var folder = PeftAdapter.Save(model, dir, "fr");
            Assert.AreEqual(Path.Combine(dir, "fr"), folder);
            Assert.IsTrue(File.Exists(Path.Combine(dir, "fr", "adapter_model.safetensors")));
            Assert.IsFalse(File.Exists(Path.Combine(dir, "adapter_model.safetensors")));

            var fresh = MiniBert.Create(44);
            PeftAdapter.Load(fresh, dir, "fr", log: _ => { });
            CollectionAssert.AreEqual(new[] { "fr" }, lora.get_adapter_names(fresh).ToArray());
            CollectionAssert.AreEqual(new[] { "fr" }, lora.active_adapters(fresh).ToArray(), "the first adapter of a model is active");
            Assert.IsTrue(fresh.state_dict().ContainsKey(Q1 + ".lora_adapters.fr.lora_B"));
            AssertExactlyEqual(fresh.forward(MiniBert.Ids()), expected, "named adapter round trip");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    [DataRow("\"use_dora\": true", "use_dora")]
    [DataRow("\"init_lora_weights\": \"pissa\"", "pissa")]
    [DataRow("\"init_lora_weights\": \"olora\"", "olora")]
    [DataRow("\"layer_replication\": [[0, 1]]", "layer_replication")]
    [DataRow("\"lora_bias\": true", "lora_bias")]
    [DataRow("\"peft_type\": \"IA3\"", "IA3")]
    public void Load_SettingThatCannotBeHonoured_RefusedNamingItAndModelUntouched(string setting, string named)
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(45);
        var before = model.forward(MiniBert.Ids()).detach();
        var key = setting[..setting.IndexOf(':', StringComparison.Ordinal)];
        var config = string.Join('\n', Peft020Config.Split('\n').Where(l => !l.TrimStart().StartsWith(key, StringComparison.Ordinal)))
            .Replace("\"r\": 2,", "\"r\": 2,\n" + setting + ",", StringComparison.Ordinal);
        var dir = WriteHandAdapter(config, HandTensors());
        try
        {
            var e = Assert.ThrowsExactly<ArgumentException>(() => PeftAdapter.Load(model, dir, log: _ => { }));
            StringAssert.Contains(e.Message, named);
            Assert.IsFalse(model.modules().Any(m => m is ILoraLayer), "nothing injected");
            AssertExactlyEqual(model.forward(MiniBert.Ids()), before, "model unchanged");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void Load_ConfigWithoutPeftType_Refused()
    {
        var e = Assert.ThrowsExactly<ArgumentException>(() => PeftAdapter.ReadConfig("{\"r\": 4, \"target_modules\": [\"q\"]}", log: _ => { }));
        StringAssert.Contains(e.Message, "peft_type");
    }

    [TestMethod]
    public void ReadConfig_MinimalAndStringTargets_DefaultsAndRegexOrAllLinear()
    {
        var log = new List<string>();
        var minimal = PeftAdapter.ReadConfig("{\"peft_type\": \"LORA\", \"target_modules\": \".*\\\\.(query|value)\", \"x_new\": 1}", log: log.Add);
        Assert.AreEqual(8, minimal.r);
        Assert.AreEqual(8.0, minimal.lora_alpha);
        Assert.AreEqual(@".*\.(query|value)", minimal.target_modules_regex);
        Assert.AreEqual(1, log.Count);
        StringAssert.Contains(log[0], "x_new");

        var all = PeftAdapter.ReadConfig("{\"peft_type\": \"LORA\", \"target_modules\": \"all-linear\"}", log: log.Add);
        CollectionAssert.AreEqual(new[] { "all-linear" }, all.target_modules!.ToArray());
    }

    [TestMethod]
    public void Load_RegexTargetsFromFile_InjectsExactlyTheMatchingModules()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(46);
        var config = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2, \"target_modules\": \".*layer\\\\.1\\\\.attention\\\\.self\\\\.query\"}";
        var a = PeftFiles.Values(8, 1);
        var b = PeftFiles.Values(8, 2);
        var dir = WriteHandAdapter(config, ($"base_model.model.{Q1}.lora_A.weight", [2, 4], a), ($"base_model.model.{Q1}.lora_B.weight", [4, 2], b));
        try
        {
            var loaded = PeftAdapter.Load(model, dir, log: _ => { });
            CollectionAssert.AreEqual(new[] { Q1 }, loaded.ToArray());
            Assert.AreEqual(1, model.modules().Count(m => m is ILoraLayer));
            CollectionAssert.AreEqual(b, ((LoraLayer)model.Module(Q1)).lora_B!.data<float>().ToArray());
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void Load_MismatchedShape_ErrorNamesKeyAndShapes_ModelRestored()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(47);
        var before = model.forward(MiniBert.Ids()).detach();
        var tensors = HandTensors();
        var wrong = $"base_model.model.{Q1}.lora_B.weight";
        tensors = tensors.Select(t => t.key == wrong ? (t.key, new long[] { 2, 4 }, t.data) : t).ToArray();
        var dir = WriteHandAdapter(Peft020Config, tensors);
        try
        {
            var e = Assert.ThrowsExactly<ArgumentException>(() => PeftAdapter.Load(model, dir, log: _ => { }));
            StringAssert.Contains(e.Message, wrong);
            StringAssert.Contains(e.Message, "[2, 4]");
            StringAssert.Contains(e.Message, "[4, 2]");
            Assert.IsFalse(model.modules().Any(m => m is ILoraLayer), "injected layers were taken out again");
            Assert.IsTrue(model.parameters().All(p => p.requires_grad), "requires_grad restored");
            AssertExactlyEqual(model.forward(MiniBert.Ids()), before, "model unchanged");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void Load_KeyMatchingNoModule_ErrorNamesKey()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(48);
        var stray = "base_model.model.encoder.layer.0.attention.self.key.lora_A.weight";
        var tensors = HandTensors().Append((stray, new long[] { 2, 4 }, PeftFiles.Values(8, 9))).ToArray();
        var dir = WriteHandAdapter(Peft020Config, tensors);
        try
        {
            var e = Assert.ThrowsExactly<ArgumentException>(() => PeftAdapter.Load(model, dir, log: _ => { }));
            StringAssert.Contains(e.Message, stray);
            StringAssert.Contains(e.Message, "not targeted");
            Assert.IsFalse(model.modules().Any(m => m is ILoraLayer));

            var other = "base_model.model.pooler.dense.weight";
            var dir2 = WriteHandAdapter(Peft020Config, HandTensors().Append((other, new long[] { 4, 4 }, PeftFiles.Values(16, 3))).ToArray());
            try
            {
                var e2 = Assert.ThrowsExactly<ArgumentException>(() => PeftAdapter.Load(model, dir2, log: _ => { }));
                StringAssert.Contains(e2.Message, other);
            }
            finally
            {
                Directory.Delete(dir2, recursive: true);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void Save_LayersBuiltWithoutConfig_DerivesFullPathTargetsAndPatterns()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(49);
        lora.inject_adapter_in_model(new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["query"] }, model);
        lora.add_adapter(model, "x", new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["value"] });
        lora.add_weighted_adapter(model, ["default", "x"], [1.0, 1.0], "both", "cat");
        var dir = PeftFiles.TempDir();
        try
        {
            PeftAdapter.Save(model, dir, "both");
            var config = PeftAdapter.ReadConfig(File.ReadAllText(Path.Combine(dir, "both", "adapter_config.json")), log: _ => { });
            CollectionAssert.AreEquivalent(new[] { Q0, Q1, V0, V1 }, config.target_modules!.ToArray());
            Assert.AreEqual(4, config.r, "cat of two rank-2 adapters");
            Assert.AreEqual(4.0, config.lora_alpha, "α = r: scaling 1");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void Load_IntoLayersAlreadyHoldingTheAdapter_FillsThemOrRefusesOtherRank()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(50);
        var config = PeftAdapter.ReadConfig(Peft020Config, log: _ => { });
        lora.inject_adapter_in_model(config, model); // same layers, ranks and scalings as the file
        var dir = WriteHandAdapter(Peft020Config, HandTensors());
        try
        {
            PeftAdapter.Load(model, dir, log: _ => { });
            var expectedB = HandTensors().Single(t => t.key == $"base_model.model.{V1}.lora_B.weight").data;
            CollectionAssert.AreEqual(expectedB, ((LoraLayer)model.Module(V1)).lora_B!.data<float>().ToArray(), "filled in place");

            var other = MiniBert.Create(50);
            lora.inject_adapter_in_model(new LoraConfig { r = 3, target_modules = ["query", "value"] }, other);
            var e = Assert.ThrowsExactly<ArgumentException>(() => PeftAdapter.Load(other, dir, log: _ => { }));
            StringAssert.Contains(e.Message, "rank 3");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void Load_TransformersStyleKeysAndSeqClsModulesToSave_LoadsClassifierAndIgnoresMissingScore()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(51);
        var config = "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 1, \"target_modules\": [\"query\"], " +
            "\"modules_to_save\": [\"classifier\", \"score\"], \"task_type\": \"SEQ_CLS\"}";
        var classifierWeight = PeftFiles.Values(8, 4);
        var dir = WriteHandAdapter(config,
            ($"{Q0}.lora_A.weight", [1, 4], PeftFiles.Values(4, 1)), ($"{Q0}.lora_B.weight", [4, 1], PeftFiles.Values(4, 2)),
            ($"{Q1}.lora_A.weight", [1, 4], PeftFiles.Values(4, 3)), ($"{Q1}.lora_B.weight", [4, 1], PeftFiles.Values(4, 5)),
            ("base_model.model.classifier.weight", [2, 4], classifierWeight), ("base_model.model.classifier.bias", [2], [0.25f, -0.5f]));
        var log = new List<string>();
        try
        {
            PeftAdapter.Load(model, dir, log: log.Add);
            CollectionAssert.AreEqual(PeftFiles.Values(4, 5), ((LoraLayer)model.Module(Q1)).lora_B!.data<float>().ToArray(), "bare key path");
            var classifier = model.Module("classifier");
            CollectionAssert.AreEqual(classifierWeight, classifier.named_parameters().Single(p => p.name == "weight").parameter.data<float>().ToArray());
            CollectionAssert.AreEqual(new[] { 0.25f, -0.5f }, classifier.named_parameters().Single(p => p.name == "bias").parameter.data<float>().ToArray());
            Assert.IsTrue(classifier.parameters().All(p => p.requires_grad), "modules_to_save train");
            Assert.IsTrue(log.Any(l => l.Contains("'score'", StringComparison.Ordinal)), string.Join(" | ", log));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void SaveLoad_BiasAll_AdaptedBiasesUnderBaseLayerAsPeftAndRestored()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(52);
        lora.inject_adapter_in_model(new LoraConfig { r = 2, target_modules = ["query"], bias = "all" }, model);
        var q0 = (LoraLayer)model.Module(Q0);
        using (no_grad())
        {
            q0.bias!.add_(1.0f); // a trained bias
        }

        var expected = q0.bias!.detach().clone();
        var dir = PeftFiles.TempDir();
        try
        {
            PeftAdapter.Save(model, dir);
            using (var header = PeftFiles.ReadHeader(Path.Combine(dir, "adapter_model.safetensors")))
            {
                Assert.IsTrue(header.RootElement.TryGetProperty($"base_model.model.{Q0}.base_layer.bias", out _), "adapted module's bias");
                Assert.IsTrue(header.RootElement.TryGetProperty("base_model.model.encoder.layer.0.attention.self.key.bias", out _), "other biases");
            }

            var fresh = MiniBert.Create(52);
            PeftAdapter.Load(fresh, dir, log: _ => { });
            AssertExactlyEqual(((LoraLayer)fresh.Module(Q0)).bias!, expected, "bias restored");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void ReadConfig_LayersToTransformAndExcludeRegex_SelectModulesAsPeft()
    {
        using var scope = NewDisposeScope();
        var config = PeftAdapter.ReadConfig(
            "{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"query\", \"value\", \"encoder.layer.0.attention.output.dense\"], " +
            "\"layers_to_transform\": [1], \"layers_pattern\": \"layer\", \"exclude_modules\": \".*layer\\\\.1\\\\..*value\"}", log: _ => { });
        CollectionAssert.AreEqual(new[] { 1 }, config.layers_to_transform!.ToArray());
        Assert.AreEqual(@".*layer\.1\..*value", config.exclude_modules_regex);
        var model = MiniBert.Create(53);
        var replaced = lora.inject_adapter_in_model(config, model);
        // Suffix matches keep layer 1 only; the exact path of layer 0's output.dense is always a target; the regex drops layer 1's value.
        CollectionAssert.AreEqual(new[] { "encoder.layer.0.attention.output.dense", Q1 }, replaced.ToArray());

        var json = JsonDocument.Parse(PeftAdapter.WriteConfig(config)).RootElement;
        Assert.AreEqual(1, json.GetProperty("layers_to_transform")[0].GetInt32());
        Assert.AreEqual("layer", json.GetProperty("layers_pattern")[0].GetString());
        Assert.AreEqual(@".*layer\.1\..*value", json.GetProperty("exclude_modules").GetString());
    }

    private static void AssertShape(JsonElement root, string key, params long[] shape)
    {
        Assert.IsTrue(root.TryGetProperty(key, out var entry), $"missing key {key}");
        CollectionAssert.AreEqual(shape, entry.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray(), key);
    }
}

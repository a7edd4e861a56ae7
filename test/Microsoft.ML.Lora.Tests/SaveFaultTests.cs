using System.Diagnostics;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Faults while saving (issue 13 §1, model files): two processes saving one path at once, a full disk, cancellation during
/// Save. <c>mlContext.Model.SaveAtomic</c> (<see cref="LoraModelSaving"/>) must leave either the old file or one complete
/// new model, never a partial or mixed one; ML.NET's own <c>Save(path)</c> is shown not to.
/// </summary>
[TestClass]
public sealed class SaveFaultTests
{
    private static readonly string[] OnlyTheModel = ["model.zip"];
    private static readonly string[] ModelAndFiller = ["model.zip", "filler"];
    private static string root = string.Empty;
    private static MLContext context = null!;
    private static LoraTransformer model = null!;
    private static IDataView data = null!;
    private static string savedPath = string.Empty;
    private static float[] savedScores = [];

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        var baseModel = TinyBert.Create(Path.Combine(root, "base"), seed: 31);
        context = new MLContext(seed: 31);
        data = context.Data.LoadFromEnumerable(TinyBert.Sentences(32, 2, 31).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = TinyBert.FastOptions(baseModel);
        options.MaxEpochs = 2;
        model = context.Transforms.LoraFineTune(options).Fit(data);
        savedPath = Path.Combine(root, "model.zip");
        context.Model.SaveAtomic(model, data.Schema, savedPath);
        savedScores = model.Transform(data).GetColumn<float>("Score").ToArray();
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        model?.Dispose();
        TinyBert.DeleteTempDirectory(root);
    }

    /// <summary>Loads <paramref name="path"/> and checks that it scores the data exactly as the trained model does.</summary>
    private static void AssertIsTheSavedModel(string path)
    {
        var loaded = new MLContext(seed: 1).Model.Load(path, out _);
        try
        {
            CollectionAssert.AreEqual(savedScores, loaded.Transform(data).GetColumn<float>("Score").ToArray(), path);
        }
        finally
        {
            (loaded as IDisposable)?.Dispose();
        }
    }

    private static string FolderWithCopyOfSaved(string name)
    {
        string folder = Path.Combine(root, name);
        Directory.CreateDirectory(folder);
        string path = Path.Combine(folder, "model.zip");
        File.Copy(savedPath, path, overwrite: true);
        return path;
    }

    [TestMethod]
    public void SaveAtomic_TwoProcessesSaveOnePathWhileThisOneLoadsIt_AlwaysOneCompleteModel()
    {
        // Two LoadCheck processes each load the model (two processes loading one file at once) and save it 15 times to
        // one target with SaveAtomic, while this process loads the target again and again. Every load here must
        // succeed with the model's exact scores: a reader sees the old file or a new complete one, never a mix.
        string target = FolderWithCopyOfSaved("concurrent");
        var processes = Enumerable.Range(0, 2).Select(_ => LoadCheckRunner.Start("save", savedPath, target, "15")).ToList();
        var outputs = processes.Select(p => (Out: p.StandardOutput.ReadToEndAsync(), Err: p.StandardError.ReadToEndAsync())).ToList();
        int loads = 0;
        while (processes.Any(p => !p.HasExited))
        {
            AssertIsTheSavedModel(target);
            loads++;
        }

        for (int i = 0; i < processes.Count; i++)
        {
            Assert.IsTrue(processes[i].WaitForExit(TimeSpan.FromMinutes(3)), $"process {i} finished");
            string output = outputs[i].Out.Result + outputs[i].Err.Result;
            Assert.AreEqual(0, processes[i].ExitCode, output);
            StringAssert.Contains(output, "saved 15 times");
            processes[i].Dispose();
        }

        AssertIsTheSavedModel(target);
        CollectionAssert.AreEqual(OnlyTheModel, Directory.GetFiles(Path.GetDirectoryName(target)!).Select(Path.GetFileName).ToArray(),
            "no temporary file left behind");
        Console.WriteLine($"{loads} loads in this process during the two processes' 30 saves");
    }

    [TestMethod]
    public void SaveAtomic_CancelledDuringSave_ThrowsAndKeepsOldFile()
    {
        string target = FolderWithCopyOfSaved("cancel");
        var before = File.ReadAllBytes(target);

        // Cancelled midway: ML.NET saves the input schema after the transformers, and reads a column annotation's value
        // to do so; the annotation's getter cancels, so the token is cancelled after the LoRA part was written.
        using var cancellation = new CancellationTokenSource();
        bool cancelledInSave = false;
        var schema = SchemaWithCancellingAnnotation(() =>
        {
            cancellation.Cancel();
            cancelledInSave = true;
        });
        Assert.Throws<OperationCanceledException>(() => context.Model.SaveAtomic(model, schema, target, cancellation.Token));
        Assert.IsTrue(cancelledInSave, "the token was cancelled during Save");
        CollectionAssert.AreEqual(before, File.ReadAllBytes(target), "old file intact");
        CollectionAssert.AreEqual(OnlyTheModel, Directory.GetFiles(Path.GetDirectoryName(target)!).Select(Path.GetFileName).ToArray(),
            "the temporary file is removed");

        // Cancelled before: nothing is written.
        Assert.Throws<OperationCanceledException>(() => context.Model.SaveAtomic(model, data.Schema, target, cancellation.Token));
        CollectionAssert.AreEqual(before, File.ReadAllBytes(target));

        // Not cancelled: the file is replaced by a complete model.
        string fresh = Path.Combine(Path.GetDirectoryName(target)!, "fresh.zip");
        context.Model.SaveAtomic(model, data.Schema, fresh, CancellationToken.None);
        AssertIsTheSavedModel(fresh);
    }

    [TestMethod]
    public void Save_OntoFullDisk_SaveAtomicKeepsOldFilePlainSaveLeavesPartialFile()
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root")
        {
            Assert.Inconclusive("Needs root on Linux to mount a 1 MB tmpfs (a full disk).");
        }

        string mount = Path.Combine(root, "full");
        Directory.CreateDirectory(mount);
        var (mountCode, mountOutput) = Run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount);
        if (mountCode != 0)
        {
            Assert.Inconclusive($"mount -t tmpfs failed ({mountCode}): {mountOutput}");
        }

        try
        {
            string target = Path.Combine(mount, "model.zip");
            File.Copy(savedPath, target);
            var before = File.ReadAllBytes(target);

            // Fill the disk until a write fails: far less room than a model needs is left.
            using (var filler = new FileStream(Path.Combine(mount, "filler"), FileMode.CreateNew))
            {
                var block = new byte[4096];
                try
                {
                    while (true)
                    {
                        filler.Write(block);
                        filler.Flush(flushToDisk: true);
                    }
                }
                catch (IOException)
                {
                }
            }

            var atomic = Assert.Throws<IOException>(() => context.Model.SaveAtomic(model, data.Schema, target));
            StringAssert.Contains(atomic.Message, "space", atomic.ToString());
            CollectionAssert.AreEqual(before, File.ReadAllBytes(target), "SaveAtomic: the old file is intact");
            CollectionAssert.AreEquivalent(ModelAndFiller, Directory.GetFiles(mount).Select(Path.GetFileName).ToArray(),
                "the temporary file is removed");
            AssertIsTheSavedModel(target);

            // SaveAtomic to a new path: no file at all, rather than a partial one.
            string fresh = Path.Combine(mount, "new.zip");
            Assert.Throws<IOException>(() => context.Model.SaveAtomic(model, data.Schema, fresh));
            Assert.IsFalse(File.Exists(fresh), "SaveAtomic: no partial file");

            // ML.NET's Save(path) creates the file, then fails writing it: a partial file is left behind (why SaveAtomic
            // exists). Over an existing model it truncates the old file first, so a failure loses the old model too.
            Assert.Throws<Exception>(() => context.Model.Save(model, data.Schema, fresh));
            Assert.IsTrue(File.Exists(fresh), "plain Save leaves a file");
            Assert.IsLessThan(before.Length, new FileInfo(fresh).Length, "plain Save: the file is partial");
            Assert.Throws<Exception>(() => new MLContext().Model.Load(fresh, out _));
        }
        finally
        {
            var (code, output) = Run("umount", mount);
            Assert.AreEqual(0, code, $"umount {mount}: {output}");
        }
    }

    /// <summary>A schema with the text and label columns, whose text column has an annotation whose getter calls <paramref name="onRead"/>.</summary>
    private static DataViewSchema SchemaWithCancellingAnnotation(Action onRead)
    {
        var annotations = new DataViewSchema.Annotations.Builder();
        annotations.Add("Note", TextDataViewType.Instance, (ref ReadOnlyMemory<char> value) =>
        {
            onRead();
            value = "read while saving".AsMemory();
        });
        var builder = new DataViewSchema.Builder();
        builder.AddColumn("Text", TextDataViewType.Instance, annotations.ToAnnotations());
        builder.AddColumn("Label", BooleanDataViewType.Instance);
        return builder.ToSchema();
    }

    private static (int ExitCode, string Output) Run(string file, params string[] arguments)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stdout + stderr.Result);
    }
}
